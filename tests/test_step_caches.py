"""diffusers' step caches stacked with AsymRnR under torch.compile: no per-step recompiles.

Every cache's decisions run eagerly around compiled forwards (:mod:`asymrnr_fx.fences`): with
AsymRnR at ratio 0 the compiled run equals diffusers' own hook run eagerly, a second generation
recompiles nothing (``error_on_recompile``), with classifier-free guidance batched or split, and
with the cache enabled before or after ``apply``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

import asymrnr_fx
from asymrnr_fx.tiny_models import build_tiny

STEPS = 50


def _caches(clock: dict) -> dict[str, Callable[[], Any]]:
    from diffusers.hooks import (
        FasterCacheConfig,
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
    )

    def now() -> float:
        return clock["t"]

    return {
        "FirstBlockCache": lambda: FirstBlockCacheConfig(threshold=0.2),
        "TaylorSeer": lambda: TaylorSeerCacheConfig(cache_interval=3, disable_cache_before_step=2,
                                                    cache_identifiers=[r"blocks\.\d+"]),
        "PAB": lambda: PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(0, 1000),
            current_timestep_callback=now),
        "FasterCache": lambda: FasterCacheConfig(
            spatial_attention_block_skip_range=2, current_timestep_callback=now,
            attention_weight_callback=lambda _: 0.5, is_guidance_distilled=True, tensor_format="BCFHW"),
        "MagCache": lambda: MagCacheConfig(mag_ratios=[1.0] * STEPS, num_inference_steps=STEPS, threshold=0.5,
                                           max_skip_steps=2, retention_ratio=0.2),
    }


def _generate(pipe: SimpleNamespace, inputs: dict, clock: dict, cfg: str, steps: int = STEPS,
              on_step: Callable[[int], None] = lambda i: None,
              on_branch: Callable[[str], None] = lambda name: None) -> torch.Tensor:
    """A pipeline-shaped generation: CFG batched (one forward of batch 2) or split (two
    forwards, "cond" then "uncond"); ``on_branch`` hears each forward's cache_context name. The
    pipeline resets the caches after it, as diffusers does."""
    pipe.scheduler.set_timesteps(steps)
    latents = inputs["hidden_states"]
    with torch.no_grad():
        for i, t in enumerate(pipe.scheduler.timesteps):
            on_step(i)
            clock["t"] = float(t)
            if cfg == "batched":
                on_branch("cond_uncond")
                with pipe.transformer.cache_context("cond_uncond"):
                    both = pipe.transformer(**{**inputs, "hidden_states": torch.cat([latents] * 2),
                                               "encoder_hidden_states": torch.cat([inputs["encoder_hidden_states"]] * 2),
                                               "timestep": t.expand(2)})[0]
                cond, uncond = both.chunk(2)
            else:
                outs = []
                for branch in ("cond", "uncond"):
                    on_branch(branch)
                    with pipe.transformer.cache_context(branch):
                        outs.append(pipe.transformer(**{**inputs, "hidden_states": latents, "timestep": t.expand(1)})[0])
                cond, uncond = outs
            out = uncond + 2.0 * (cond - uncond)
            latents = pipe.scheduler.step(out, t, latents).prev_sample
    pipe.transformer._reset_stateful_cache()
    return latents


def _pipe() -> tuple[SimpleNamespace, dict]:
    tiny = build_tiny("wan", batch=1)
    return SimpleNamespace(transformer=tiny.model, scheduler=FlowMatchEulerDiscreteScheduler()), tiny.inputs


@pytest.mark.parametrize("cfg", ["batched", "split"])
@pytest.mark.parametrize("cache", ["FirstBlockCache", "TaylorSeer", "PAB", "FasterCache", "MagCache"])
def test_a_cache_and_asymrnr_recompile_nothing_after_the_first_generation(cache: str, cfg: str) -> None:
    clock = {"t": 1000.0}
    pipe, inputs = _pipe()
    torch._dynamo.reset()
    pipe.transformer.enable_cache(_caches(clock)[cache]())
    asymrnr_fx.apply(pipe, kv_ratio=0.5, cache_interval=3, inner="eager")
    (state,) = asymrnr_fx.states_of(pipe)
    reduced_by_step: list[int] = []
    torch._dynamo.utils.counters.clear()
    first = _generate(pipe, inputs, clock, cfg, on_step=lambda i: reduced_by_step.append(
        state.stats["cache_refreshes"] + state.stats["cache_hits"]))
    reduced = state.stats["cache_refreshes"] + state.stats["cache_hits"]
    # AsymRnR still reduces attention in the last ten steps: the cached blocks did not fall back
    # to eager past Dynamo's recompile limit (unfenced, TaylorSeer and PAB stop reducing by then,
    # MagCache never starts), and a handful of graphs serve the whole generation.
    assert reduced > reduced_by_step[STEPS - 10] > 0
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 6
    with torch._dynamo.config.patch(error_on_recompile=True):
        second = _generate(pipe, inputs, clock, cfg)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert state.stats["generations"] == 2
    assert state.stats["cache_refreshes"] + state.stats["cache_hits"] == 2 * reduced
    asymrnr_fx.remove(pipe)


@pytest.mark.parametrize("order", ["cache first", "apply first"])
@pytest.mark.parametrize("cache", ["FirstBlockCache", "TaylorSeer", "PAB", "FasterCache", "MagCache"])
def test_at_ratio_zero_the_compiled_cache_is_diffusers_hook_run_eagerly(cache: str, order: str) -> None:
    clock = {"t": 1000.0}
    pipe, inputs = _pipe()
    pipe.transformer.enable_cache(_caches(clock)[cache]())
    expected = _generate(pipe, inputs, clock, "split", steps=20)

    pipe, inputs = _pipe()
    torch._dynamo.reset()
    if order == "cache first":
        pipe.transformer.enable_cache(_caches(clock)[cache]())
    asymrnr_fx.apply(pipe, kv_ratio=0.0, inner="eager")
    if order == "apply first":
        pipe.transformer.enable_cache(_caches(clock)[cache]())
    out = _generate(pipe, inputs, clock, "split", steps=20)
    assert float((out - expected).norm() / expected.norm()) < 1e-5
    asymrnr_fx.remove(pipe)
    assert not any(getattr(m.forward, "_torchdynamo_disable", False) for m in pipe.transformer.modules()
                   if "forward" in vars(m))  # remove() takes the fences down


def test_a_cache_disabled_after_apply_leaves_no_fence_behind() -> None:
    clock = {"t": 1000.0}
    pipe, inputs = _pipe()
    torch._dynamo.reset()
    pipe.transformer.enable_cache(_caches(clock)["TaylorSeer"]())
    asymrnr_fx.apply(pipe, kv_ratio=0.5, inner="eager")
    _generate(pipe, inputs, clock, "split", steps=4)
    pipe.transformer.disable_cache()
    plain = _generate(pipe, inputs, clock, "split", steps=4)
    assert torch.isfinite(plain).all()
    fenced = [m for m in pipe.transformer.modules() if m is not pipe.transformer
              and "forward" in vars(m) and getattr(m.forward, "_torchdynamo_disable", False)]
    assert not fenced


def _cache_dit_pipe(enable_first: bool, kv_ratio: float | None) -> tuple[Any, dict]:
    """A tiny real Wan pipeline with cache-dit's DBCache (one front block computed every step)
    and AsymRnR applied before or after it."""
    cache_dit = pytest.importorskip("cache_dit")
    from .tiny_pipelines import build_pipeline

    pipe, call = build_pipeline("wan2.1")

    def enable() -> None:
        cache_dit.enable_cache(pipe, cache_config=cache_dit.DBCacheConfig(
            Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=2, residual_diff_threshold=0.2))

    if enable_first:
        enable()
    if kv_ratio is not None:
        asymrnr_fx.apply(pipe, kv_ratio=kv_ratio, cache_interval=3, inner="eager")
    if not enable_first:
        enable()
    return pipe, call


def _cache_dit_generate(pipe: Any, call: dict, steps_seen: list[int] | None = None) -> torch.Tensor:
    def tell(pipe_: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        if steps_seen is not None:
            steps_seen.append(asymrnr_fx.states_of(pipe_)[0].step)
        return kwargs

    torch.manual_seed(0)
    with torch.no_grad():
        return pipe(**{**call, "num_inference_steps": 12, "output_type": "latent"},
                    callback_on_step_end=tell).frames


@pytest.mark.parametrize("enable_first", [True, False], ids=["cache-dit first", "apply first"])
def test_cache_dit_stacks_compiled_in_either_order(enable_first: bool) -> None:
    pipe, call = _cache_dit_pipe(True, None)
    expected = _cache_dit_generate(pipe, call)
    torch._dynamo.reset()
    pipe, call = _cache_dit_pipe(enable_first, 0.0)
    torch.testing.assert_close(_cache_dit_generate(pipe, call), expected, rtol=1e-5, atol=1e-6)

    torch._dynamo.reset()
    pipe, call = _cache_dit_pipe(enable_first, 0.5)
    (state,) = asymrnr_fx.states_of(pipe)
    first_steps: list[int] = []
    first = _cache_dit_generate(pipe, call, first_steps)
    reduced = state.stats["cache_refreshes"] + state.stats["cache_hits"]
    assert state.sites_rewritable > 0 and reduced > 0
    second_steps: list[int] = []
    with torch._dynamo.config.patch(error_on_recompile=True):
        second = _cache_dit_generate(pipe, call, second_steps)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    # After step i the scheduler has told the next one: i + 1 (12 = the generation is done).
    assert first_steps == second_steps == list(range(1, 13))
    assert state.stats["generations"] == 2
    assert state.stats["cache_refreshes"] + state.stats["cache_hits"] == 2 * reduced


def test_a_cached_model_leaves_other_models_of_its_class_compiled_whole() -> None:
    """A compiled frame of the transformer's code that breaks at a fenced block inside the block
    loop makes Dynamo skip that code for every instance: a plain model of the same class would
    then run its forward eagerly, in small graphs. With a cache, apply compiles the blocks."""
    clock = {"t": 1000.0}
    torch._dynamo.reset()
    plain_pipe, inputs = _pipe()
    plain = torch.compile(plain_pipe.transformer, backend="eager", dynamic=False)
    with torch.no_grad():
        plain(**inputs)
    pipe, _ = _pipe()
    pipe.transformer.enable_cache(_caches(clock)["TaylorSeer"]())
    asymrnr_fx.apply(pipe, kv_ratio=0.5, inner="eager")
    _generate(pipe, inputs, clock, "split", steps=4)
    assert not asymrnr_fx.states_of(pipe)[0].config.is_identity
    torch._dynamo.utils.counters.clear()
    with torch.no_grad():
        plain(**inputs)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0  # its one whole graph still serves
