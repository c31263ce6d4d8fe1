"""apply(pipe) / remove(pipe) on a pipeline-shaped object with a real diffusers scheduler."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler

import asymrnr_fx
from asymrnr_fx.pipeline import apply, remove, states_of
from asymrnr_fx.tiny_models import build_tiny


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


def test_apply_rejects_objects_without_a_transformer() -> None:
    with pytest.raises(ValueError, match="transformer"):
        asymrnr_fx.pipeline.apply(SimpleNamespace(unet=None))


@pytest.mark.parametrize("name", ["cogvideox", "hunyuanvideo", "wan", "ltxvideo", "mochi"])
def test_latent_grid_hint_matches_the_token_grid(name: str) -> None:
    from asymrnr_fx.models import latent_grid

    tiny = build_tiny(name, batch=1)
    assert latent_grid(tiny.model, (), tiny.inputs) == tiny.grid


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
