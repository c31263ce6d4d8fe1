"""One compiled rewrite for every phase, step tracking and the matching cache of one backend
over real sampling loops."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

import asymrnr_fx
from asymrnr_fx import Schedule
from asymrnr_fx.tiny_models import build_tiny

STEPS = 50


def _schedule(num_layers: int) -> Schedule:
    # Three phases; boundaries off the cache grid (k=5) so a phase change forces a refresh.
    return Schedule.from_ranges(num_layers, STEPS, [
        {"steps": (12, 32), "layers": (0, 1), "kv": 0.5},
        {"steps": (32, 50), "layers": (0, num_layers), "kv": 0.3, "q": 0.5},
    ])


def _loop(model, inputs: dict, scheduler: DDIMScheduler, generations: int = 1, cfg: str = "batched") -> torch.Tensor:
    latents = inputs["hidden_states"]
    for _ in range(generations):
        scheduler.set_timesteps(STEPS)
        latents = inputs["hidden_states"].clone()
        for t in scheduler.timesteps:
            timestep = t.expand(latents.shape[0])
            noise = model(**{**inputs, "hidden_states": latents, "timestep": timestep})[0]
            if cfg == "split":  # the unconditional half as a second call of the same step
                noise = noise + 0.0 * model(**{**inputs, "hidden_states": latents, "timestep": timestep})[0]
            latents = scheduler.step(noise, t, latents).prev_sample
    return latents


@pytest.mark.parametrize("name,cfg", [("cogvideox", "batched"), ("wan", "batched"), ("wan", "split")])
def test_fifty_step_loop_compiles_once_for_every_phase_and_never_recompiles(name: str, cfg: str) -> None:
    tiny = build_tiny(name, batch=2 if cfg == "batched" else 1)
    schedule = _schedule(tiny.num_layers)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiler = asymrnr_fx.backend(schedule=schedule, inner="eager")
    compiled = torch.compile(tiny.model, backend=compiler)
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        out = _loop(compiled, tiny.inputs, DDIMScheduler(), generations=2, cfg=cfg)
    assert torch.isfinite(out).all()
    assert counters["stats"]["unique_graphs"] == 1  # one Dynamo graph, no recompiles
    phases = [p for p in schedule.distinct_phases() if any(q or kv for q, kv in p)]
    assert len(phases) == 2
    state = compiler.state
    # One rewritten graph serves every phase (kept counts are input sizes), refresh or reuse.
    assert state.stats["compiles"] == 1
    expected_refresh = [12, 15, 20, 25, 30, 32, 35, 40, 45]
    assert state.refresh_steps == expected_refresh * 2
    assert state.stats["generations"] == 2  # the second loop's restart was detected
    assert state.stats["cache_hits"] > 0
    assert {branch for *_, branch in state.cache} == ({0, 1} if cfg == "split" else {0})


def test_reused_cache_equals_recomputed_matching() -> None:
    tiny = build_tiny("cogvideox", batch=1)
    torch._dynamo.reset()
    compiler = asymrnr_fx.backend(kv_ratio=0.5, q_ratio=0.5, inner="eager")
    compiled = torch.compile(tiny.model, backend=compiler)
    state = compiler.state
    with torch.no_grad():
        state.set_step(0)
        refreshed = compiled(**tiny.inputs)[0]
        refreshes = state.stats["cache_refreshes"]
        state.set_step(1)  # same activations, indices reused from step 0
        reused = compiled(**tiny.inputs)[0]
    assert state.stats["cache_refreshes"] == refreshes
    assert state.stats["cache_hits"] == 2 * tiny.num_layers
    assert torch.equal(refreshed, reused)


def test_cfg_in_one_batch_and_in_two_calls_count_the_same_steps() -> None:
    steps_seen: dict[str, list[int]] = {}
    for style in ("one-batch", "two-calls"):
        tiny = build_tiny("wan", batch=2 if style == "one-batch" else 1)
        torch._dynamo.reset()
        compiler = asymrnr_fx.backend(kv_ratio=0.5, cache_interval=3, inner="eager")
        compiled = torch.compile(tiny.model, backend=compiler)
        state = compiler.state
        seen = []
        with torch.no_grad():
            for t in (900, 700, 500, 300, 100):
                calls = 1 if style == "one-batch" else 2
                for _ in range(calls):
                    compiled(**{**tiny.inputs, "timestep": torch.full((tiny.inputs["hidden_states"].shape[0],), t)})
                seen.append(state.step)
        steps_seen[style] = seen
        assert state.refresh_steps == [0, 3]
        # Each CFG call keeps the indices matched on its own activations.
        assert {branch for _, _, branch in state.cache} == ({0} if style == "one-batch" else {0, 1})
    assert steps_seen["one-batch"] == steps_seen["two-calls"] == [0, 1, 2, 3, 4]


def test_regional_compilation_honours_per_layer_ratios() -> None:
    tiny = build_tiny("wan", batch=1)
    config = asymrnr_fx.AsymRnRConfig(layer_ratios=[(0.0, 0.5), (0.0, 0.0)], grid=tiny.grid)
    outputs = {}
    for style in ("whole", "regional"):
        torch._dynamo.reset()
        model = build_tiny("wan", batch=1).model
        compiler = asymrnr_fx.backend(config, inner="eager")
        if style == "whole":
            model = torch.compile(model, backend=compiler)
        else:
            model.compile_repeated_blocks(backend=compiler)
        with torch.no_grad():
            for t in (900, 800):
                outputs[style] = model(**{**tiny.inputs, "timestep": torch.full((1,), t)})[0]
        assert sorted(compiler.state.cache) == [(0, "kv", 0)]  # layer 0 cut, layer 1 untouched
        assert compiler.state.step == 1
    torch.testing.assert_close(outputs["whole"], outputs["regional"])


def test_new_generation_drops_the_cache() -> None:
    tiny = build_tiny("wan", batch=1)
    torch._dynamo.reset()
    compiler = asymrnr_fx.backend(kv_ratio=0.5, inner="eager")
    compiled = torch.compile(tiny.model, backend=compiler)
    state = compiler.state
    with torch.no_grad():
        for t in (900, 800, 900):
            compiled(**{**tiny.inputs, "timestep": torch.full((1,), t)})
    assert state.step == 0 and state.stats["generations"] == 2
    assert state.refresh_steps == [0]  # step 0 of the second generation appended nothing new
    assert state.stats["cache_refreshes"] == 2 * tiny.num_layers  # K/V of each layer, twice


def test_schedule_with_the_wrong_layer_count_is_an_error() -> None:
    tiny = build_tiny("wan", batch=1)
    torch._dynamo.reset()
    schedule = Schedule.uniform(num_layers=5, num_steps=10, kv=0.3)
    compiled = torch.compile(tiny.model, backend=asymrnr_fx.backend(schedule=schedule, inner="eager"))
    with pytest.raises(Exception, match="num_layers=5"):
        with torch.no_grad():  # checked once a forward has shown the site count
            for t in (900, 800):
                compiled(**{**tiny.inputs, "timestep": torch.full((1,), t)})


def test_mode_and_options_reach_inductor() -> None:
    from asymrnr_fx.dynamo_backend import inductor_config_patches

    patches = inductor_config_patches("max-autotune-no-cudagraphs", {"fx_graph_cache": False})
    assert patches["max_autotune"] is True and patches["fx_graph_cache"] is False
    assert not patches.get("triton.cudagraphs", False)


def test_composes_with_first_block_cache() -> None:
    from diffusers.hooks import FirstBlockCacheConfig

    tiny = build_tiny("wan", batch=1)
    tiny.model.enable_cache(FirstBlockCacheConfig(threshold=0.5))
    torch._dynamo.reset()
    # The cache hook makes Dynamo run the transformer's own frame eagerly (only the blocks
    # compile), so no graph shows the patch embedding: apply() gives the grid from the input.
    asymrnr_fx.apply(tiny.model, kv_ratio=0.5, inner="eager")
    (state,) = asymrnr_fx.states_of(tiny.model)
    steps = []
    with torch.no_grad():
        for t in range(900, 0, -100):
            with tiny.model.cache_context("cond"):
                out = tiny.model(**{**tiny.inputs, "timestep": torch.full((1,), t)})[0]
            assert torch.isfinite(out).all()
            steps.append(state.step)
    # Steps whose later blocks the hook skips still advance the count.
    assert steps == list(range(9))
    assert state.refresh_steps == [0, 5]


def test_mode_reaches_the_one_compiled_rewrite(monkeypatch) -> None:
    import torch._inductor.compile_fx as compile_fx_module

    seen = []

    def recording(gm, example_inputs, config_patches=None, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.append(dict(config_patches or {}))
        return gm.forward

    monkeypatch.setattr(compile_fx_module, "compile_fx", recording)
    tiny = build_tiny("wan", batch=1)
    torch._dynamo.reset()
    compiled = torch.compile(tiny.model, backend=asymrnr_fx.backend(kv_ratio=0.5),
                             mode="max-autotune-no-cudagraphs")
    with torch.no_grad():
        out = compiled(**tiny.inputs)[0]
    assert torch.isfinite(out).all()
    assert seen and all(p.get("max_autotune") is True for p in seen)
    assert not any(p.get("triton.cudagraphs") for p in seen)
