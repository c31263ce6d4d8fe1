"""Tiny configs of the HunyuanVideo family: image-to-video (token replace), HunyuanVideo 1.5
(text-to-video and image-to-video) and Framepack."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import TinyModel, grid_of, randn, timesteps

__all__ = ["CONFIGS"]

_FRAMES, _SIZE, _TEXT = 4, 8, 6


def _mask(batch: int, tokens: int, padded: int = 2) -> torch.Tensor:
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    mask[:, tokens - padded:] = False  # padded prompt tokens
    return mask


def _hunyuan_i2v(batch: int, seed: int) -> TinyModel:
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(seed)
    model = HunyuanVideoTransformer3DModel(
        in_channels=8, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=16,
        pooled_projection_dim=8, rope_axes_dim=(2, 2, 4), guidance_embeds=False,
        image_condition_type="token_replace").eval()
    inputs = {"hidden_states": randn(batch, 8, _FRAMES, _SIZE, _SIZE), "timestep": timesteps(batch),
              "encoder_hidden_states": randn(batch, _TEXT, 16), "encoder_attention_mask": _mask(batch, _TEXT),
              "pooled_projections": randn(batch, 8), "return_dict": False}
    return TinyModel("hunyuanvideo-i2v", model, inputs, grid_of(_FRAMES, _SIZE, _SIZE, (1, 2, 2)), 2,
                     "image: the grid's first frame (token replace: its own timestep)")


def _hunyuan15(batch: int, seed: int, image: bool) -> TinyModel:
    from diffusers import HunyuanVideo15Transformer3DModel

    torch.manual_seed(seed)
    model = HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16,
        text_embed_2_dim=8, image_embed_dim=12, rope_axes_dim=(2, 2, 4), target_size=16,
        task_type="i2v" if image else "t2v").eval()
    size = 4  # patch size 1: 4x4 latent tokens per frame
    image_embeds = randn(batch, 3, 12) if image else torch.zeros(batch, 3, 12)
    inputs = {"hidden_states": randn(batch, 9, _FRAMES, size, size), "timestep": timesteps(batch).float(),
              "encoder_hidden_states": randn(batch, _TEXT, 16), "encoder_attention_mask": _mask(batch, _TEXT),
              "encoder_hidden_states_2": randn(batch, 4, 8), "encoder_attention_mask_2": _mask(batch, 4, 1),
              "image_embeds": image_embeds, "return_dict": False}
    notes = ("image: latent channels of the grid + SigLIP tokens beside the prompt" if image
             else "prompt: two text encoders' tokens, padding moved last")
    return TinyModel("hunyuanvideo15-i2v" if image else "hunyuanvideo15", model, inputs,
                     grid_of(_FRAMES, size, size, (1, 1, 1)), 2, notes)


def _framepack(batch: int, seed: int) -> TinyModel:
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    torch.manual_seed(seed)
    model = HunyuanVideoFramepackTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4), image_condition_type=None,
        has_image_proj=True, image_proj_dim=16, has_clean_x_embedder=True).eval()
    frames, history = 3, 2

    def indices(count: int, start: int) -> torch.Tensor:
        return torch.arange(start, start + count)

    inputs = {"hidden_states": randn(batch, 4, frames, _SIZE, _SIZE), "timestep": timesteps(batch),
              "encoder_hidden_states": randn(batch, _TEXT, 16), "encoder_attention_mask": _mask(batch, _TEXT),
              "pooled_projections": randn(batch, 8), "guidance": torch.full((batch,), 6000.0),
              "image_embeds": randn(batch, 3, 16), "indices_latents": indices(frames, 1),
              "latents_clean": randn(batch, 4, history, _SIZE, _SIZE), "indices_latents_clean": indices(history, 0),
              "latents_history_2x": randn(batch, 4, history, _SIZE, _SIZE),
              "indices_latents_history_2x": indices(history, 4),
              "latents_history_4x": randn(batch, 4, 4 * history, _SIZE, _SIZE),
              "indices_latents_history_4x": indices(4 * history, 6), "return_dict": False}
    return TinyModel("hunyuanvideo-framepack", model, inputs, grid_of(frames, _SIZE, _SIZE, (1, 2, 2)), 2,
                     "clean and 2x/4x history latents: extra tokens before the video, never reduced")


def _hunyuan(batch: int, seed: int) -> TinyModel:
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(seed)
    frames, height, width, text = 4, 8, 8, 6
    model = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
        num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=2,
        patch_size_t=1, text_embed_dim=32, pooled_projection_dim=16, rope_axes_dim=(4, 6, 6),
    ).eval()
    mask = torch.ones(batch, text, dtype=torch.bool)
    mask[:, -2:] = False  # padded text tokens
    inputs = {
        "hidden_states": torch.randn(batch, 4, frames, height, width),
        "timestep": torch.full((batch,), 500, dtype=torch.long),
        "encoder_hidden_states": torch.randn(batch, text, 32),
        "encoder_attention_mask": mask,
        "pooled_projections": torch.randn(batch, 16),
        "guidance": torch.full((batch,), 6000.0),
        "return_dict": False,
    }
    return TinyModel("hunyuanvideo", model, inputs, (frames, height // 2, width // 2), 2)


CONFIGS: dict[str, Callable[[int, int], TinyModel]] = {
    "hunyuanvideo": _hunyuan,
    "hunyuanvideo-i2v": _hunyuan_i2v,
    "hunyuanvideo15": lambda batch, seed: _hunyuan15(batch, seed, False),
    "hunyuanvideo15-i2v": lambda batch, seed: _hunyuan15(batch, seed, True),
    "hunyuanvideo-framepack": _framepack,
}
