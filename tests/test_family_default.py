"""With no ratios given, the models the AsymRnR authors calibrated run their base table.

``apply(pipe)`` reads the transformer's class, the bare backend the blocks in its graphs; every
other model keeps the conservative K/V default. A preset is laid out before the first step runs
when one graph holds the forward, so the first generation computes what every later one does.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

import asymrnr_fx
from asymrnr_fx.config import DEFAULT_KV_RATIO
from asymrnr_fx.schedules.presets import default_preset
from asymrnr_fx.tiny_models import build_tiny


def _generate(pipe: SimpleNamespace, tiny, steps: int) -> torch.Tensor:  # noqa: ANN001
    pipe.scheduler.set_timesteps(steps)
    latents = tiny.inputs["hidden_states"]
    for t in pipe.scheduler.timesteps:
        out = pipe.transformer(**{**tiny.inputs, "hidden_states": latents, "timestep": t.expand(1)})[0]
        latents = pipe.scheduler.step(out, t, latents).prev_sample
    return latents


@pytest.mark.parametrize("name,expected", [("cogvideox", "cogvideox-2b"), ("hunyuanvideo", "hunyuanvideo"),
                                           ("mochi", "mochi"), ("wan", None), ("ltxvideo", None)])
def test_apply_without_ratios_runs_the_authors_table_where_they_calibrated(name, expected, caplog) -> None:
    tiny = build_tiny(name)
    pipe = SimpleNamespace(transformer=tiny.model, scheduler=FlowMatchEulerDiscreteScheduler())
    with caplog.at_level("INFO", logger="asymrnr_fx"):
        asymrnr_fx.apply(pipe, inner="eager")
    (state,) = asymrnr_fx.states_of(pipe)
    assert state.config.schedule == expected
    if expected is None:
        assert (state.config.q_ratio, state.config.kv_ratio) == (0.0, DEFAULT_KV_RATIO)
    else:
        assert f"authors' calibrated {expected!r} table" in caplog.text
    asymrnr_fx.remove(pipe)


def test_given_ratios_or_settings_win_over_the_authors_table() -> None:
    tiny = build_tiny("cogvideox")
    pipe = SimpleNamespace(transformer=tiny.model, scheduler=FlowMatchEulerDiscreteScheduler())
    asymrnr_fx.apply(pipe, inner="eager", kv_ratio=0.5)
    assert asymrnr_fx.states_of(pipe)[0].config.schedule is None
    asymrnr_fx.remove(pipe)
    asymrnr_fx.apply(pipe, inner="eager", cache_interval=2)  # a matching setting, not a ratio
    config = asymrnr_fx.states_of(pipe)[0].config
    assert (config.schedule, config.cache_interval) == ("cogvideox-2b", 2)
    asymrnr_fx.remove(pipe)


def test_cogvideox_5b_is_told_by_its_block_count() -> None:
    assert default_preset(["CogVideoXTransformer3DModel"], 42) == "cogvideox-5b"
    assert default_preset(["CogVideoXBlock", "Attention"], 30) == "cogvideox-2b"
    assert default_preset(["WanTransformerBlock"], 30) is None


@pytest.mark.parametrize("name,expected", [("cogvideox", "cogvideox-2b"), ("wan", None)])
def test_the_bare_backend_reads_the_family_from_the_graph_and_forgets_it_on_reset(name, expected) -> None:
    tiny = build_tiny(name)
    torch._dynamo.reset()
    compiler = asymrnr_fx.backend(inner="eager")
    with torch.no_grad():
        torch.compile(tiny.model, backend=compiler)(**tiny.inputs)
    assert compiler.config.schedule == expected
    compiler.reset()
    assert compiler.config.schedule is None and compiler.state.config is compiler.config


def test_the_first_generation_computes_what_every_later_one_does() -> None:
    """The authors' CogVideoX-2B table cuts Q by 0.8 in block 0 from step 0 on: the first step of
    the first generation must be cut too (the schedule is laid out from the whole-model graph
    before its first site runs), not only once the first forward has counted the sites."""
    tiny = build_tiny("cogvideox")
    pipe = SimpleNamespace(transformer=tiny.model, scheduler=FlowMatchEulerDiscreteScheduler())
    torch._dynamo.reset()
    asymrnr_fx.apply(pipe, inner="eager")
    (state,) = asymrnr_fx.states_of(pipe)
    with torch.no_grad():
        first = _generate(pipe, tiny, 3)
        assert state.stats["q_reduced"] > 0 or state.stats["cache_refreshes"] > 0
        second = _generate(pipe, tiny, 3)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    asymrnr_fx.remove(pipe)
