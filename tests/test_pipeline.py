"""apply(pipe) / remove(pipe) on a pipeline-shaped object with a real diffusers scheduler."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler

import asymrnr_fx
from asymrnr_fx.pipeline import apply, remove, states_of
from asymrnr_fx.tiny_models import TINY_MODELS, build_tiny

# Inputs without a grid in them: the hint is None and only a graph's own evidence (or grid=) counts.
NO_HINT = {"wan-animate2", "sana-wm-refiner", "minimax-h3", "joyimage-edit-plus", "cosmos3-omni"}


def _generate(pipe: SimpleNamespace, inputs: dict, steps: int) -> torch.Tensor:
    pipe.scheduler.set_timesteps(steps)
    latents = inputs["hidden_states"]
    for t in pipe.scheduler.timesteps:
        noise = pipe.transformer(**{**inputs, "hidden_states": latents, "timestep": t.expand(1)})[0]
        latents = pipe.scheduler.step(noise, t, latents).prev_sample
    return latents


def test_apply_tracks_generations_from_the_scheduler_and_remove_undoes_it() -> None:
    tiny = build_tiny("wan", batch=1)
    pipe = SimpleNamespace(transformer=tiny.model, scheduler=DDIMScheduler())
    torch._dynamo.reset()
    with torch.no_grad():
        eager = _generate(pipe, tiny.inputs, 4)
        apply(pipe, kv_ratio=0.5, cache_interval=2, inner="eager")
        with pytest.raises(ValueError, match="already applied"):
            apply(pipe)
        first = _generate(pipe, tiny.inputs, 4)
        second = _generate(pipe, tiny.inputs, 4)  # same timesteps again: a new generation
        (state,) = states_of(pipe)
        assert state.num_steps == 4 and state.step == 4  # told by the scheduler: 4 steps done
        assert state.stats["generations"] == 2
        assert state.refresh_steps == [0, 2, 0, 2]
        torch.testing.assert_close(first, second)
        assert not torch.equal(first, eager)
        remove(pipe)
        assert not {"set_timesteps", "step"} & set(vars(pipe.scheduler))
        torch.testing.assert_close(_generate(pipe, tiny.inputs, 4), eager)


def test_scheduler_tap_keeps_the_signature_diffusers_inspects() -> None:
    """Regression: the wrapped set_timesteps showed (*args, **kwargs), so diffusers'
    retrieve_timesteps refused `sigmas` and apply() broke the HunyuanVideo, LTX and Mochi
    pipelines."""
    import inspect

    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import retrieve_timesteps

    tiny = build_tiny("wan", batch=1)
    pipe = SimpleNamespace(transformer=tiny.model, scheduler=FlowMatchEulerDiscreteScheduler())
    apply(pipe, inner="eager")
    try:
        assert "sigmas" in inspect.signature(pipe.scheduler.set_timesteps).parameters
        timesteps, steps = retrieve_timesteps(pipe.scheduler, sigmas=[1.0, 0.75, 0.5, 0.25])
        assert steps == 4 and states_of(pipe)[0].num_steps == 4
    finally:
        remove(pipe)


def test_apply_rejects_objects_without_a_transformer() -> None:
    with pytest.raises(ValueError, match="transformer"):
        asymrnr_fx.pipeline.apply(SimpleNamespace(unet=None))


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_latent_grid_hint_matches_the_token_grid(name: str) -> None:
    """The hint apply() gives is the token grid, or nothing where the input holds no grid
    (pre-patchified tokens without num_frames/height/width, packed sequences, lists)."""
    from asymrnr_fx.models import family_of, latent_grid

    tiny = build_tiny(name, batch=1)
    assert family_of(tiny.model) is not None  # calibration and apply() read the family table
    hint = latent_grid(tiny.model, (), tiny.inputs)
    assert hint == tiny.grid or (hint is None and name in NO_HINT)


def test_latent_grid_of_a_channels_last_latent_and_of_an_unknown_class() -> None:
    """Regression: a (B, T, H, W, C) latent was read as (B, C, T, H, W), so Kandinsky's
    (4, 4, 4) grid became (8, 4, 2) and its sites were partitioned on that wrong grid; a class
    outside the family table got the same guess."""
    from asymrnr_fx.models import latent_grid

    tiny = build_tiny("kandinsky5", batch=1)
    assert latent_grid(tiny.model, (), tiny.inputs) == (4, 4, 4)

    class Unknown(torch.nn.Module):
        config = {"patch_size": 2}

    assert latent_grid(Unknown(), (torch.zeros(1, 4, 4, 8, 8),), {}) is None


def test_apply_gives_ltx_its_3d_grid() -> None:
    tiny = build_tiny("ltxvideo", batch=1)
    pipe = SimpleNamespace(transformer=tiny.model, scheduler=DDIMScheduler())
    torch._dynamo.reset()
    apply(pipe, kv_ratio=0.5, inner="eager")
    try:
        with torch.no_grad():
            pipe.transformer(**tiny.inputs)
        (state,) = states_of(pipe)
        (plan,) = {entry.key.layout for entry in state.cache.values()}
        assert plan.grid == tiny.grid and plan.grid_inferred
    finally:
        remove(pipe)
