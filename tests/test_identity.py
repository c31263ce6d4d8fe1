"""Same input, same output on any model: forwards and sites known without guessing from names.

Regression tests for each defect of the any-model issue, and properties over input names,
graph breaks, CFG styles and call counts. The ground truth is the same model with its steps
told by hand (``state.set_step``): guessing must never compute something else.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import asymrnr_fx
from asymrnr_fx import Schedule

GRID = (2, 4, 4)
DIM, HEADS = 16, 2


def _sinusoid(t: torch.Tensor) -> torch.Tensor:
    freqs = torch.exp(torch.arange(DIM // 2, dtype=torch.float32) * (-math.log(10000.0) / (DIM // 2)))
    angles = t.float().reshape(-1, 1) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.modulation = nn.Linear(DIM, DIM)
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.out = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        h = x + self.modulation(temb)[:, None]
        q, k, v = self.qkv(h).view(batch, tokens, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, DIM)
        return x + self.out(o)


class Toy(nn.Module):
    """A video DiT in miniature whose noise-level input may have any name, that may embed it
    once or in every block, and may break the graph between blocks."""

    def __init__(self, name: str = "timestep", per_block: bool = False, graph_break: bool = False,
                 layers: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.name, self.per_block, self.graph_break = name, per_block, graph_break
        self.embed = nn.Linear(DIM, DIM)
        self.blocks = nn.ModuleList(Block() for _ in range(layers))
        self.skip: set[int] = set()  # blocks a step cache skips this step
        self.discard: set[int] = set()  # blocks computed, their output thrown away

    def forward(self, x: torch.Tensor, **noise: torch.Tensor) -> torch.Tensor:
        t = noise[self.name]
        temb = self.embed(_sinusoid(t))
        for i, block in enumerate(self.blocks):
            if i in self.skip:
                continue
            if self.graph_break and i:
                torch._dynamo.graph_break()
            out = block(x, self.embed(_sinusoid(t)) if self.per_block else temb)
            x = x if i in self.discard else out
        return x


def _x(batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, math.prod(GRID), DIM, generator=torch.Generator().manual_seed(seed))


SCHEDULE = Schedule.from_ranges(2, 4, [{"layers": [0, 0.5], "steps": [0.25, 1.0], "kv": 0.5, "q": 0.3},
                                       {"layers": [0.5, 1.0], "steps": [0.5, 1.0], "kv": 0.25}])


def _generate(model: Toy, backend: asymrnr_fx.AsymRnRBackend, *, two_calls: bool, told: bool,
              steps: int = 4, generations: int = 1) -> list[torch.Tensor]:
    compiled = torch.compile(model, backend=backend, dynamic=False)
    outputs = []
    with torch.no_grad():
        for _ in range(generations):
            for step, t in enumerate(torch.linspace(900, 100, steps)):
                if told:
                    backend.state.set_step(step, steps)
                noise = {model.name: t.reshape(1)}
                if two_calls:
                    outputs += [compiled(_x(1, 0), **noise), compiled(_x(1, 1), **noise)]
                else:
                    outputs.append(compiled(torch.cat([_x(1, 0), _x(1, 1)]), **noise))
    return outputs


def _backend(**fields: object) -> asymrnr_fx.AsymRnRBackend:
    settings = {"schedule": SCHEDULE, "grid": GRID, "cache_interval": 2, "num_steps": 4, **fields}
    return asymrnr_fx.backend(inner="eager", **settings)


# -- the reproduction --------------------------------------------------------------------

class _Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(32, 96)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x + 0 * t).view(1, 32, 3, 2, 16).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v)


def test_the_same_input_gives_the_same_output_whatever_the_input_is_called(caplog) -> None:
    torch.manual_seed(0)
    model, x = _Plain(), torch.randn(1, 32, 32)
    backend = asymrnr_fx.backend(kv_ratio=0.5, grid=(2, 4, 4), inner="eager")
    compiled = torch.compile(model, backend=backend, dynamic=False)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="asymrnr_fx"):
        outputs = [compiled(x, torch.tensor(500.0)) for _ in range(4)]
    for out in outputs[1:]:
        torch.testing.assert_close(out, outputs[0], rtol=0, atol=0)
    assert len(backend.state.cache) <= 1 and backend.state.stats["forwards"] == 4
    assert backend.state.ratios.sites_per_forward == 1
    assert "no step signal" in caplog.text  # `0 * t` is no noise level: said once, at WARNING


@pytest.mark.parametrize("name", ["t", "timesteps", "sigma", "noise_level"])
def test_any_name_of_the_noise_level_counts_the_same_steps(name: str) -> None:
    expected = _generate(Toy("timestep"), _backend(), two_calls=True, told=False)
    torch._dynamo.reset()
    backend = _backend()
    got = _generate(Toy(name), backend, two_calls=True, told=False)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert backend.state.step == 3 and backend.state.refresh_steps == [1, 2]  # step 0 is not cut


# -- properties: same input, same output -----------------------------------------------------------

@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(["timestep", "t", "sigma", "ts"]), per_block=st.booleans(),
       graph_break=st.booleans(), two_calls=st.booleans(), generations=st.integers(1, 2))
def test_guessed_steps_equal_told_steps(name, per_block, graph_break, two_calls, generations) -> None:
    """Whatever the input is called, wherever the graph breaks, whether every block embeds the
    noise level, CFG in one batch or two calls, over several generations: the output of the
    guessed steps is the output of the steps told by hand."""
    outputs = {}
    for told in (True, False):
        torch._dynamo.reset()
        backend = _backend()
        model = Toy(name, per_block=per_block, graph_break=graph_break)
        outputs[told] = _generate(model, backend, two_calls=two_calls, told=told, generations=generations)
        assert backend.state.ratios.sites_per_forward == 2
    for a, b in zip(outputs[False], outputs[True], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_timestep_in_every_block_behind_graph_breaks_is_one_forward() -> None:
    """Each block's graph has a timestep input: still one forward per call, so a correct
    2-layer schedule is accepted and each block gets its own layer's ratios."""
    backend = _backend()
    _generate(Toy(per_block=True, graph_break=True), backend, two_calls=False, told=False)
    assert backend.state.ratios.sites_per_forward == 2
    assert backend.state.stats["forwards"] == 4 and backend.state.step == 3
    assert {site for site, _, _ in backend.state.cache} == {0, 1}


# -- a site is its block, whichever blocks a cache skips --------------------------------------------

@pytest.mark.parametrize("hooked", [False, True])
def test_a_cache_that_skips_a_block_never_shifts_ratios_onto_another(hooked: bool) -> None:
    """Block 1 skipped on steps 1 and 3 (as a step cache does; not on a refresh step, where a
    skipped block has no indices to match) must give what block 1 computed and thrown away
    gives: block 2 keeps block 2's ratios and cached indices."""
    per_layer_q, per_layer_kv = (0.0, 0.0, 0.3), (0.5, 0.0, 0.25)
    schedule = Schedule(3, 4, q=(per_layer_q,) * 4, kv=(per_layer_kv,) * 4)
    outputs = {}
    for style in ("skip", "discard"):
        torch._dynamo.reset()
        model = Toy(layers=3)
        backend = asymrnr_fx.backend(schedule=schedule, grid=GRID, cache_interval=2, inner="eager")
        if hooked:
            asymrnr_fx.apply(model, backend.config, inner="eager")
            compiled = model
        else:
            compiled = torch.compile(model, backend=backend, dynamic=False)
        outputs[style] = []
        with torch.no_grad():
            for step, t in enumerate(torch.linspace(900, 100, 4)):
                setattr(model, style, {1} if step in (1, 3) else set())
                outputs[style].append(compiled(_x(), timestep=t.reshape(1)))
        if hooked:
            asymrnr_fx.remove(model)
    for a, b in zip(outputs["skip"], outputs["discard"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# -- a second resolution keeps AsymRnR on -------------------------------------------------------------

def test_a_second_resolution_under_default_dynamic_stays_rewritten(caplog) -> None:
    """torch.compile's default recompiles a new size with dynamic shapes: the rewrite must stay
    on and equal a static compile at that size."""
    model = Toy()
    backend = asymrnr_fx.backend(kv_ratio=0.5, q_ratio=0.3, inner="eager")
    compiled = torch.compile(model, backend=backend)  # dynamic=None: automatic dynamic shapes
    small, large = (2, 4, 4), (4, 4, 4)
    for grid in (small, large):  # what apply's hook reads from a video input
        backend.state.add_grid_evidence(grid)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="asymrnr_fx"):
        for grid in (small, large, large):
            x = torch.randn(1, math.prod(grid), DIM, generator=torch.Generator().manual_seed(1))
            got = compiled(x, timestep=torch.tensor([500.0]))
    assert "dynamic" not in caplog.text
    assert backend.state.stats["sizes_specialized"] >= 1
    torch._dynamo.reset()
    static = asymrnr_fx.backend(kv_ratio=0.5, q_ratio=0.3, grid=large, inner="eager")
    with torch.no_grad():
        expected = torch.compile(Toy(), backend=static, dynamic=False)(x, timestep=torch.tensor([500.0]))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    unreduced = Toy()(x, timestep=torch.tensor([500.0]))
    assert (got - unreduced).abs().max() > 1e-3  # the rewrite did run at the second size


# -- the layer count is checked before the first output ---------------------------------------------

def test_a_schedule_of_the_wrong_layer_count_fails_before_the_first_output() -> None:
    model = Toy()
    wrong = Schedule.from_ranges(3, 4, [{"layers": [0, 1], "kv": 0.5}])
    asymrnr_fx.apply(model, schedule=wrong, grid=GRID, inner="eager")
    try:
        with torch.no_grad(), pytest.raises(ValueError, match="num_layers=3 but the model runs 2"):
            model(_x(), timestep=torch.tensor([900.0]))
    finally:
        asymrnr_fx.remove(model)


def _weights_as_buffers(model: nn.Module) -> nn.Module:
    """Plain tensors instead of parameters: a graph served to several blocks then cannot tell
    them apart by their weights."""
    for module in list(model.modules()):
        for name, param in list(module.named_parameters(recurse=False)):
            delattr(module, name)
            module.register_buffer(name, param.detach().clone())
    return model


def test_sites_told_apart_only_by_call_order_say_when_a_block_was_skipped(caplog) -> None:
    model = _weights_as_buffers(Toy(layers=3, graph_break=True))
    asymrnr_fx.apply(model, kv_ratio=0.5, grid=GRID, inner="eager")
    try:
        with torch.no_grad(), caplog.at_level(logging.WARNING, logger="asymrnr_fx"):
            for step, t in enumerate((900.0, 700.0, 500.0)):
                model.skip = {1} if step == 2 else set()
                model(_x(), timestep=torch.tensor([t]))
                if step < 2:
                    assert "call order" not in caplog.text
    finally:
        asymrnr_fx.remove(model)
    assert sum("call order" in r.getMessage() for r in caplog.records) == 1
