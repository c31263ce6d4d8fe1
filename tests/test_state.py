"""Per-application state, told steps, whole-model schedules, no unproven rewrites.

One regression test (or more) for each defect of the runtime-state issue, on tiny configs of
the real diffusers classes.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, HeunDiscreteScheduler

import asymrnr_fx
from asymrnr_fx import Schedule
from asymrnr_fx.cli import _schedule_config
from asymrnr_fx.ops import dst_count, site_partition
from asymrnr_fx.schedules.presets import PRESETS
from asymrnr_fx.state import AsymRnRState
from asymrnr_fx.tiny_models import build_tiny


def _pipe(name: str, scheduler=None) -> tuple[SimpleNamespace, object]:  # noqa: ANN001
    tiny = build_tiny(name, batch=1)
    return SimpleNamespace(transformer=tiny.model, scheduler=scheduler or FlowMatchEulerDiscreteScheduler()), tiny


def _generate(pipe: SimpleNamespace, tiny, steps: int, seen: list | None = None) -> torch.Tensor:  # noqa: ANN001
    """A pipeline-shaped denoising loop: set_timesteps, then forward + scheduler.step."""
    pipe.scheduler.set_timesteps(steps)
    latents = tiny.inputs["hidden_states"]
    for t in pipe.scheduler.timesteps:
        out = pipe.transformer(**{**tiny.inputs, "hidden_states": latents, "timestep": t.expand(1)})[0]
        if seen is not None:
            seen.append([s.step for s in asymrnr_fx.states_of(pipe)][0])
        latents = pipe.scheduler.step(out, t, latents).prev_sample
    return latents


# -- 1. schedules resolved for the whole model (regional compilation, graph breaks) --------------

@pytest.mark.parametrize("name", ["wan", "hunyuanvideo"])
@pytest.mark.parametrize("schedule", ["wan2.1", "hunyuanvideo", "file"])
def test_presets_and_saved_schedules_work_under_regional_compilation(name, schedule, tmp_path) -> None:
    pipe, tiny = _pipe(name)
    if schedule == "file":
        schedule = tmp_path / "s.json"
        Schedule.from_ranges(tiny.num_layers, 6, [{"layers": [1, 2], "steps": [0.5, 1.0], "kv": 0.5}],
                             meta={"stride": [1, 2, 2], "cache_interval": 2}).save(schedule)
    torch._dynamo.reset()
    asymrnr_fx.apply(pipe, regional=True, schedule=schedule, num_steps=6, inner="eager")
    (state,) = asymrnr_fx.states_of(pipe)
    with torch.no_grad():
        out = _generate(pipe, tiny, 6)
    assert torch.isfinite(out).all()
    assert state.ratios.sites_per_forward == tiny.num_layers
    assert state.stats["cache_refreshes"] > 0  # the schedule's later steps were cut
    # Each rewritten call claimed its own index: only the sites the schedule cuts hold matches
    # (the prior and the file cut only the deeper one).
    laid_out = Schedule.preset(schedule, tiny.num_layers, 6) if isinstance(schedule, str) else None
    cut = {1} if laid_out is None or laid_out.meta["kind"] == "prior" else {
        i for i in range(tiny.num_layers) if any(row[i] for table in (laid_out.q, laid_out.kv) for row in table)}
    assert {site for site, _, _ in state.cache} == cut


def test_sites_split_over_graphs_by_a_graph_break_get_the_whole_model_schedule() -> None:
    tiny = build_tiny("cogvideox", batch=1)
    blocks = tiny.model.transformer_blocks
    forward = blocks[1].forward

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        torch._dynamo.graph_break()
        return forward(*args, **kwargs)

    blocks[1].forward = broken
    schedule = Schedule.from_ranges(2, 4, [{"layers": [1, 2], "kv": 0.5}])
    torch._dynamo.reset()
    compiler = asymrnr_fx.backend(schedule=schedule, grid=tiny.grid, inner="eager")
    compiled = torch.compile(tiny.model, backend=compiler)
    with torch.no_grad():
        for t in (900, 700):
            compiled(**{**tiny.inputs, "timestep": torch.full((1,), t)})
    assert compiler.state.ratios.sites_per_forward == 2
    assert sorted(compiler.state.cache) == [(1, "kv", 0)]


# -- 2. steps told by the pipeline; the fallback's rules ---------------------------------------

def test_hunyuan_regional_counts_each_step_once_told_or_guessed() -> None:
    pipe, tiny = _pipe("hunyuanvideo")
    torch._dynamo.reset()
    asymrnr_fx.apply(pipe, regional=True, kv_ratio=0.5, cache_interval=3, inner="eager")
    seen: list[int] = []
    with torch.no_grad():
        _generate(pipe, tiny, 6, seen)
    (state,) = asymrnr_fx.states_of(pipe)
    assert seen == [0, 1, 2, 3, 4, 5]
    assert state.stats["generations"] == 1 and state.refresh_steps == [0, 3]

    # Without apply(): one tick source (the token refiner's timestep); temb does not tick too.
    tiny = build_tiny("hunyuanvideo", batch=1)
    torch._dynamo.reset()
    compiler = asymrnr_fx.backend(kv_ratio=0.5, cache_interval=3, inner="eager")
    tiny.model.compile_repeated_blocks(backend=compiler)
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(6)
    guessed = []
    with torch.no_grad():
        for t in scheduler.timesteps:
            tiny.model(**{**tiny.inputs, "timestep": t.expand(1)})
            guessed.append(compiler.state.step)
    assert guessed == [0, 1, 2, 3, 4, 5]
    assert compiler.state.stats["generations"] == 1 and compiler.state.refresh_steps == [0, 3]


def _fallback_steps(timesteps: list, per_token: bool = False) -> tuple[list[int], AsymRnRState]:
    tiny = build_tiny("wan", batch=1)
    torch._dynamo.reset()
    compiler = asymrnr_fx.backend(kv_ratio=0.5, inner="eager")
    compiled = torch.compile(tiny.model, backend=compiler)
    seen = []
    with torch.no_grad():
        for t in timesteps:
            if per_token:  # Wan 2.2 image-to-video: the first frame's tokens have timestep 0
                timestep = torch.full((1, 64), float(t))
                timestep[:, :16] = 0
            else:
                timestep = torch.full((1,), float(t))
            compiled(**{**tiny.inputs, "timestep": timestep})
            seen.append(compiler.state.step)
    return seen, compiler.state


def test_increasing_timesteps_count_steps_and_restart_generations() -> None:
    seen, state = _fallback_steps([0, 250, 500, 750, 0, 250, 500])  # Mochi's convention
    assert seen == [0, 1, 2, 3, 0, 1, 2]
    assert state.stats["generations"] == 2


def test_per_token_timesteps_use_the_largest_value() -> None:
    seen, state = _fallback_steps([900, 700, 500, 300], per_token=True)
    assert seen == [0, 1, 2, 3]
    assert state.stats["cache_hits"] > 0  # same branch every step, so the cache hits


def test_repeated_timestep_is_another_forward_of_the_same_step() -> None:
    seen, state = _fallback_steps([900, 700, 700, 500, 500, 300])  # a second-order scheduler
    assert seen == [0, 1, 1, 2, 2, 3]
    assert state.stats["generations"] == 1


def test_second_order_scheduler_steps_are_told_by_the_scheduler() -> None:
    pipe, tiny = _pipe("wan", HeunDiscreteScheduler())
    torch._dynamo.reset()
    asymrnr_fx.apply(pipe, kv_ratio=0.5, inner="eager")
    seen: list[int] = []
    with torch.no_grad():
        _generate(pipe, tiny, 4, seen)
    (state,) = asymrnr_fx.states_of(pipe)
    assert state.num_steps == len(pipe.scheduler.timesteps) == 7  # Heun repeats interior steps
    assert seen == list(range(7))


def test_split_cfg_is_told_by_the_pipelines_cache_context() -> None:
    pipe, tiny = _pipe("wan")
    torch._dynamo.reset()
    asymrnr_fx.apply(pipe, kv_ratio=0.5, cache_interval=2, inner="eager")
    (state,) = asymrnr_fx.states_of(pipe)
    pipe.scheduler.set_timesteps(4)
    with torch.no_grad():
        for i, t in enumerate(pipe.scheduler.timesteps):
            for branch in ("cond", "uncond"):
                with pipe.transformer.cache_context(branch, step_index=i, num_inference_steps=4):
                    pipe.transformer(**{**tiny.inputs, "timestep": t.expand(1)})
                assert state.step == i
    assert {key[2] for key in state.cache} == {"cond", "uncond"}
    assert state.refresh_steps == [0, 2] and state.stats["cache_hits"] == 2 * 2 * tiny.num_layers


# -- per application: two transformers never share steps or indices -----------------------------

def test_two_experts_have_their_own_states() -> None:
    tiny = build_tiny("wan", batch=1)
    second = build_tiny("wan", batch=1, seed=1).model
    pipe = SimpleNamespace(transformer=tiny.model, transformer_2=second,
                           scheduler=FlowMatchEulerDiscreteScheduler())
    torch._dynamo.reset()
    asymrnr_fx.apply(pipe, kv_ratio=0.5, inner="eager")
    first_state, second_state = asymrnr_fx.states_of(pipe)
    assert first_state is not second_state
    pipe.scheduler.set_timesteps(4)
    with torch.no_grad():
        for i, t in enumerate(pipe.scheduler.timesteps):
            expert = pipe.transformer if i < 2 else pipe.transformer_2  # the boundary at step 2
            expert(**{**tiny.inputs, "timestep": t.expand(1)})
            pipe.scheduler.step(torch.zeros_like(tiny.inputs["hidden_states"]), t, tiny.inputs["hidden_states"])
    assert first_state.refresh_steps == [0] and second_state.refresh_steps == [2]
    assert first_state.step == second_state.step == 4  # both told by the one scheduler
    keys = {id(e.keep) for e in first_state.cache.values()} & {id(e.keep) for e in second_state.cache.values()}
    assert not keys


# -- 3. no rewrite without proof -------------------------------------------------------------

class TextSelfAttention(torch.nn.Module):
    """A text encoder's self-attention: linear q/k/v over 77 tokens, SDPA."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (torch.nn.Linear(dim, dim) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, c = x.shape
        q, k, v = (p(x).view(b, s, self.heads, c // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, c)


def test_a_text_encoders_self_attention_is_left_alone(caplog) -> None:
    module, x = TextSelfAttention().eval(), torch.randn(1, 77, 16)
    torch._dynamo.reset()
    compiler = asymrnr_fx.backend(kv_ratio=0.5, q_ratio=0.5, inner="eager")
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="asymrnr_fx"):
        out = torch.compile(module, backend=compiler)(x)
        assert torch.equal(out, module(x))
    assert compiler.state.sites_rewritable == 0
    assert "no evidence that this is video" in caplog.text  # said once, at WARNING


def test_a_real_text_encoder_is_left_alone() -> None:
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=80, attn_implementation="sdpa")
    model, ids = BertModel(config).eval(), torch.randint(0, 100, (1, 77))
    torch._dynamo.reset()
    compiler = asymrnr_fx.backend(kv_ratio=0.5, q_ratio=0.5, inner="eager")
    with torch.no_grad():
        out = torch.compile(model, backend=compiler)(ids).last_hidden_state
        assert torch.equal(out, model(ids).last_hidden_state)
    assert compiler.state.sites_rewritable == 0 and compiler.state.sites_left_alone


def test_hunyuans_text_token_refiner_is_untouched_under_regional_compilation() -> None:
    tiny = build_tiny("hunyuanvideo", batch=1)
    refined = []
    tiny.model.context_embedder.register_forward_hook(lambda m, a, out: refined.append(out))
    with torch.no_grad():
        tiny.model(**tiny.inputs)
        torch._dynamo.reset()
        compiler = asymrnr_fx.backend(kv_ratio=0.5, q_ratio=0.5, inner="eager")
        tiny.model.compile_repeated_blocks(backend=compiler)
        tiny.model(**tiny.inputs)
    assert torch.equal(refined[0], refined[1])
    assert compiler.state.sites_rewritable == tiny.num_layers  # the video blocks still are


def test_blocks_without_grid_evidence_are_left_alone_with_the_fix_named(caplog) -> None:
    tiny = build_tiny("wan", batch=1)
    torch._dynamo.reset()
    compiler = asymrnr_fx.backend(kv_ratio=0.5, inner="eager")
    tiny.model.compile_repeated_blocks(backend=compiler)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="asymrnr_fx"):
        tiny.model(**tiny.inputs)
    assert compiler.state.sites_rewritable == 0
    assert "apply(pipe, regional=True)" in caplog.text


def test_a_per_query_mask_is_left_alone() -> None:
    class Joint(TextSelfAttention):
        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            b, s, c = x.shape
            q, k, v = (p(x).view(b, s, 2, c // 2).transpose(1, 2) for p in (self.q, self.k, self.v))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    module, x = Joint().eval(), torch.randn(1, 16, 16)
    frame = torch.arange(16) // 4  # 4 frames of 2x2 tokens: block-causal over frames
    mask = (frame[:, None] >= frame[None, :]).view(1, 1, 16, 16)
    torch._dynamo.reset()
    compiler = asymrnr_fx.backend(kv_ratio=0.5, q_ratio=0.5, grid=(4, 2, 2), inner="eager")
    with torch.no_grad():
        out = torch.compile(module, backend=compiler)(x, mask)
        assert torch.equal(out, module(x, mask))
    ((_, reason),) = compiler.state.sites_left_alone
    assert "may be causal" in reason


# -- 4. the Python API and the CLI agree on presets and saved schedules -------------------------

@pytest.mark.parametrize("name", list(PRESETS))
def test_api_and_cli_give_the_same_effective_settings(name: str) -> None:
    preset = PRESETS[name]
    api = asymrnr_fx.AsymRnRConfig(schedule=name)
    cli = _schedule_config(name, 20)
    assert api.stride == cli.stride == preset.stride
    assert api.cache_interval == cli.cache_interval == preset.cache_interval
    assert (api.metric, api.seed) == (cli.metric, cli.seed)
    # Explicit fields win over the preset's; replacing the schedule brings its own settings.
    assert asymrnr_fx.AsymRnRConfig(schedule=name, stride=(1, 1, 1)).stride == (1, 1, 1)
    assert api.replace(schedule=None).stride == (2, 2, 2)


def test_hunyuan_preset_keeps_its_q_ratio_of_0_9() -> None:
    config = asymrnr_fx.AsymRnRConfig(schedule="hunyuanvideo")
    grid = (12, 8, 8)
    num_video = 12 * 8 * 8
    # (6, 2, 2) leaves room for 0.9; the (2, 2, 2) default capped it at 0.875.
    assert num_video - dst_count(grid, config.stride) >= int(num_video * 0.9)


def test_a_saved_schedule_brings_its_settings(tmp_path) -> None:
    path = tmp_path / "calibrated.json"
    Schedule.uniform(2, 4, kv=0.3, name="x").__class__(
        2, 4, [[0.0] * 2] * 4, [[0.3] * 2] * 4,
        meta={"stride": [1, 2, 2], "cache_interval": 3, "metric": "cosine", "seed": 7}).save(path)
    for config in (asymrnr_fx.AsymRnRConfig(schedule=str(path)), _schedule_config(str(path), 4)):
        assert (config.stride, config.cache_interval, config.metric, config.seed) == ((1, 2, 2), 3, "cosine", 7)


# -- 5. a shape change does not silently turn it off -------------------------------------------

def test_apply_compiles_static_shapes_so_a_new_batch_size_is_still_rewritten(caplog) -> None:
    tiny = build_tiny("wan", batch=1)
    torch._dynamo.reset()
    asymrnr_fx.apply(tiny.model, kv_ratio=0.5, inner="eager")
    (state,) = asymrnr_fx.states_of(tiny.model)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="asymrnr_fx"):
        for batch in (1, 2, 2):
            inputs = {k: v.expand(batch, *v.shape[1:]) if isinstance(v, torch.Tensor) else v
                      for k, v in tiny.inputs.items()}
            tiny.model(**inputs)
    assert {entry.keep.shape[0] for entry in state.cache.values()} == {1, 2}
    assert "dynamic" not in caplog.text


def test_dynamic_shapes_are_reported_at_warning(caplog) -> None:
    tiny = build_tiny("wan", batch=1)
    torch._dynamo.reset()
    compiler = asymrnr_fx.backend(kv_ratio=0.5, inner="eager")
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="asymrnr_fx"):
        torch.compile(tiny.model, backend=compiler, dynamic=True)(**tiny.inputs)
    assert "dynamic=False" in caplog.text


# -- 7. a partition per (site, component, refresh window) ------------------------------------------

def test_each_refresh_window_draws_its_own_partition() -> None:
    tiny = build_tiny("wan", batch=1)
    torch._dynamo.reset()
    compiler = asymrnr_fx.backend(kv_ratio=0.5, cache_interval=2, seed=5, inner="eager")
    compiled = torch.compile(tiny.model, backend=compiler)
    state = compiler.state
    num_dst = dst_count(tiny.grid, (2, 2, 2))
    with torch.no_grad():
        for step, t in enumerate((900, 800, 700)):
            compiled(**{**tiny.inputs, "timestep": torch.full((1,), t)})
            window = step // 2
            for site in range(tiny.num_layers):
                entry = state.cache[(site, "kv", 0)]
                expected = site_partition(tiny.grid, (2, 2, 2), seed=5, site=site, component="kv", window=window)
                assert entry.window == window
                assert torch.equal(entry.keep[0, 0, :num_dst], expected.dst_idx)  # dst tokens lead


# -- 8. schedule names and files are checked at construction --------------------------------------

def test_a_schedule_typo_fails_at_construction(tmp_path) -> None:
    with pytest.raises(ValueError, match="wan2.2.*neither a preset.*wan2.1"):
        asymrnr_fx.backend(schedule="wan2.2")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    pipe, _ = _pipe("wan")
    with pytest.raises(ValueError, match="bad.json"):
        asymrnr_fx.apply(pipe, schedule=str(bad))
    assert not hasattr(pipe.transformer, "_asymrnr_applied")  # nothing was compiled or hooked


# -- 9. state does not outlive the compile -----------------------------------------------------------

@pytest.mark.parametrize("registered", [False, True])
def test_torch_compiler_reset_resets_the_state(registered: bool) -> None:
    tiny = build_tiny("wan", batch=1)
    compiler = asymrnr_fx.asymrnr_backend if registered else asymrnr_fx.backend(inner="eager")
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(tiny.model, backend="asymrnr" if registered else compiler,
                      options={"compile_threads": 1} if registered else None)(**tiny.inputs)
    state = compiler.state
    assert state.cache and state.stats["forwards"] == 1 and state.step == 0
    torch.compiler.reset()
    assert not compiler.state.cache and not compiler.state.stats and compiler.state.step == -1
