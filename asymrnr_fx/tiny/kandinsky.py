"""Tiny configs of the Kandinsky video transformers: Kandinsky 5, Kandinsky 6 (video + audio) and
the Kandinsky 6 super-resolution model. Their latents are channels-last (B, T, H, W, C)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import TinyModel, grid_of, randn, timesteps

__all__ = ["CONFIGS"]

_FRAMES, _SIZE, _TEXT = 4, 8, 6
_GRID = grid_of(_FRAMES, _SIZE, _SIZE, (1, 2, 2))


def _kandinsky5(batch: int, seed: int) -> TinyModel:
    from diffusers import Kandinsky5Transformer3DModel

    torch.manual_seed(seed)
    model = Kandinsky5Transformer3DModel(
        in_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16, out_visual_dim=4, patch_size=(1, 2, 2),
        model_dim=24, ff_dim=32, num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 4, 4)).eval()
    inputs = {"hidden_states": randn(batch, _FRAMES, _SIZE, _SIZE, 4), "encoder_hidden_states": randn(batch, _TEXT, 16),
              "timestep": timesteps(batch).float(), "pooled_projections": randn(batch, 8),
              "visual_rope_pos": [torch.arange(n) for n in _GRID], "text_rope_pos": torch.arange(_TEXT),
              "return_dict": False}
    return TinyModel("kandinsky5", model, inputs, _GRID, 2, "prompt: its own text blocks, then cross-attention")


def _kandinsky6(batch: int, seed: int) -> TinyModel:
    from diffusers import Kandinsky6Transformer3DModel

    torch.manual_seed(seed)
    model = Kandinsky6Transformer3DModel(
        in_visual_dim=4, out_visual_dim=4, in_text_dim=8, in_text_dim2=8, time_dim=16, patch_size=(1, 2, 2),
        model_dim=24, ff_dim=32, num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 4, 4), visual_cond=True,
        in_audio_dim=4, out_audio_dim=4).eval()
    inputs = {"hidden_states": randn(batch, _FRAMES, _SIZE, _SIZE, 9), "encoder_hidden_states": randn(batch, _TEXT, 8),
              "pooled_projections": randn(batch, 8), "timestep": timesteps(batch).float(),
              "audio_hidden_states": randn(batch, 5, 4), "return_dict": False}
    return TinyModel("kandinsky6", model, inputs, _GRID, 2,
                     "image: latent channels of the grid; audio: its own stream, never reduced")


def _kandinsky6_sr(batch: int, seed: int) -> TinyModel:
    from diffusers import Kandinsky6SRTransformer3DModel

    torch.manual_seed(seed)
    size = 16  # NABLA needs the token grid's sides divisible by 8
    model = Kandinsky6SRTransformer3DModel(
        in_visual_dim=4, out_visual_dim=4, time_dim=16, patch_size=(1, 2, 2), model_dim=24, ff_dim=32,
        num_visual_blocks=2, axes_dims=(4, 4, 4), nabla_window=(3, 3, 3), tile_sizes=((size, size),)).eval()
    inputs = {"hidden_states": randn(batch, 2, size, size, 9), "timestep": timesteps(batch).float(),
              "return_dict": False}
    return TinyModel("kandinsky6-sr", model, inputs, grid_of(2, size, size, (1, 2, 2)), 2,
                     "NABLA sparse attention (flex attention with a block mask)")


CONFIGS: dict[str, Callable[[int, int], TinyModel]] = {
    "kandinsky5": _kandinsky5,
    "kandinsky6": _kandinsky6,
    "kandinsky6-sr": _kandinsky6_sr,
}
