"""The shipped small model: loading, a trained denoiser, a short sampling run, GIF output."""

from __future__ import annotations

import json

import pytest
import torch

from asymrnr_fx.small.data import TEXT_DIM, TEXT_TOKENS, encode_condition, make_batch
from asymrnr_fx.small.sampling import (
    DEFAULT_WEIGHTS,
    clip_geometry,
    generate,
    load_small_model,
    save_gif,
)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return load_small_model()


def test_shipped_weights_are_small_and_documented() -> None:
    weights = DEFAULT_WEIGHTS / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size <= 20 * 2**20
    config = json.loads((DEFAULT_WEIGHTS / "config.json").read_text())
    assert config["_class_name"] == "CogVideoXTransformer3DModel"
    assert (DEFAULT_WEIGHTS / "TRAINING.md").read_text().count("seed") >= 1


def test_loads_the_real_diffusers_class(model: torch.nn.Module) -> None:
    from diffusers import CogVideoXTransformer3DModel

    assert type(model) is CogVideoXTransformer3DModel
    assert not model.training
    assert clip_geometry(model) == (8, 3, 32, 32)
    assert model.config.text_embed_dim == TEXT_DIM
    assert model.config.max_text_seq_length == TEXT_TOKENS
    assert 4 <= model.config.num_layers <= 8


@torch.no_grad()
def test_trained_model_denoises_far_better_than_chance(model: torch.nn.Module) -> None:
    # Held-out clips (seeds far from the training seeds) at noise level 0.5: the model
    # predicts the clean clip; it must beat returning its noisy input by 10x and a flat
    # per-clip, per-channel mean colour clearly.
    x0, conds = make_batch([999_000_001, 999_000_002])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    xt = 0.5 * x0 + 0.5 * noise
    pred = model(hidden_states=xt, encoder_hidden_states=encode_condition(conds),
                 timestep=torch.full((2,), 500.0), return_dict=False)[0]
    mse = (pred - x0).pow(2).mean()
    noisy_input = (xt - x0).pow(2).mean()
    flat_colour = (x0 - x0.mean(dim=(1, 3, 4), keepdim=True)).pow(2).mean()
    assert mse < 0.1 * noisy_input and mse < 0.6 * flat_colour, (float(mse), float(noisy_input), float(flat_colour))


def test_two_step_sampling_is_seeded_and_in_range(model: torch.nn.Module, tmp_path) -> None:
    clips = generate(model, ["red circle right", "blue square orbit checker"], [0, 1], steps=2)
    assert clips.shape == (2, 8, 3, 32, 32)
    assert torch.isfinite(clips).all() and clips.abs().max() <= 1.0
    again = generate(model, ["red circle right"], [0], steps=2)
    assert torch.allclose(again[0], clips[0], atol=1e-4)  # a clip depends on its seed only
    assert not torch.allclose(clips[0], clips[1])
    gif = save_gif([[clips[0], clips[1]]], tmp_path / "a.gif")
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames == 8


def test_guidance_and_argument_errors() -> None:
    from asymrnr_fx.small.train import build_model

    torch.manual_seed(0)
    tiny = build_model(num_layers=1, num_attention_heads=1, attention_head_dim=16, time_embed_dim=8,
                       sample_width=8, sample_height=8, sample_frames=5).eval()
    out = generate(tiny, ["green triangle zoom"], [3], steps=2, guidance_scale=3.0)
    assert out.shape == (1, 2, 3, 8, 8)
    with pytest.raises(ValueError, match="one seed per clip"):
        generate(tiny, ["green triangle zoom"], [1, 2], steps=2)
