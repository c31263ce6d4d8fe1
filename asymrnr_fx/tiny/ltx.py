"""Tiny configs of the LTX family: LTX-Video image-to-video (per-token timesteps) and LTX-2
(joint video + audio). Both take patchified tokens: no patch conv in their graphs."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import TinyModel, randn

__all__ = ["CONFIGS"]

_FRAMES, _SIZE, _TEXT = 4, 4, 8


def _ltx_i2v(batch: int, seed: int) -> TinyModel:
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    model = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2,
        attention_head_dim=16, cross_attention_dim=32, num_layers=2, caption_channels=32).eval()
    tokens = _FRAMES * _SIZE * _SIZE
    timestep = torch.full((batch, tokens), 500.0)
    timestep[:, :_SIZE * _SIZE] = 0.0  # the conditioning first frame is clean (the pipeline's mask)
    inputs = {"hidden_states": randn(batch, tokens, 8), "encoder_hidden_states": randn(batch, _TEXT, 32),
              "timestep": timestep, "encoder_attention_mask": torch.ones(batch, _TEXT, dtype=torch.bool),
              "num_frames": _FRAMES, "height": _SIZE, "width": _SIZE, "return_dict": False}
    return TinyModel("ltxvideo-i2v", model, inputs, (_FRAMES, _SIZE, _SIZE), 2,
                     "image: the grid's first frame (per-token timesteps)")


def _ltx2(batch: int, seed: int) -> TinyModel:
    from diffusers import LTX2VideoTransformer3DModel

    torch.manual_seed(seed)
    model = LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2,
        attention_head_dim=8, cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4,
        audio_num_attention_heads=2, audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=2,
        caption_channels=16, rope_double_precision=False).eval()
    audio_frames = 9
    inputs = {"hidden_states": randn(batch, _FRAMES * _SIZE * _SIZE, 4), "audio_hidden_states": randn(batch, audio_frames, 4),
              "encoder_hidden_states": randn(batch, _TEXT, 16), "audio_encoder_hidden_states": randn(batch, _TEXT, 16),
              "timestep": torch.full((batch,), 500.0), "encoder_attention_mask": torch.ones(batch, _TEXT, dtype=torch.bool),
              "num_frames": _FRAMES, "height": _SIZE, "width": _SIZE, "audio_num_frames": audio_frames,
              "fps": 25.0, "return_dict": False}
    return TinyModel("ltx2", model, inputs, (_FRAMES, _SIZE, _SIZE), 2,
                     "audio: its own self-attention and audio<->video cross-attention, never reduced")


def _sana_wm_refiner(batch: int, seed: int) -> TinyModel:
    from diffusers import SanaWMLTX2RefinerTransformer3DModel

    torch.manual_seed(seed)
    model = SanaWMLTX2RefinerTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
        audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=2, caption_channels=16,
        rope_double_precision=False).eval()
    tokens = _FRAMES * _SIZE * _SIZE
    rope = model.build_rotary_emb_for_absolute_positions(
        batch_size=batch, frame_positions=list(range(_FRAMES)), height=_SIZE, width=_SIZE, device="cpu", fps=24.0)
    inputs = {"hidden_states": randn(batch, tokens, 4), "encoder_hidden_states": randn(batch, _TEXT, 16),
              "timestep": torch.full((batch, tokens), 500.0), "video_rotary_emb": rope,
              "encoder_attention_mask": torch.ones(batch, _TEXT), "return_dict": False}
    return TinyModel("sana-wm-refiner", model, inputs, (_FRAMES, _SIZE, _SIZE), 2,
                     "tokens and RoPE arrive ready-made: no grid in its input (a K/V cache for its sink frames)")


def _ltx(batch: int, seed: int) -> TinyModel:
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    frames, height, width, text = 4, 4, 4, 8
    model = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2,
        attention_head_dim=16, cross_attention_dim=32, num_layers=2, caption_channels=32,
    ).eval()
    inputs = {
        "hidden_states": torch.randn(batch, frames * height * width, 8),
        "encoder_hidden_states": torch.randn(batch, text, 32),
        "timestep": torch.full((batch,), 500, dtype=torch.long),
        "encoder_attention_mask": torch.ones(batch, text, dtype=torch.bool),
        "num_frames": frames, "height": height, "width": width,
        "return_dict": False,
    }
    return TinyModel("ltxvideo", model, inputs, (frames, height, width), 2)


CONFIGS: dict[str, Callable[[int, int], TinyModel]] = {
    "ltxvideo": _ltx,
    "ltxvideo-i2v": _ltx_i2v,
    "ltx2": _ltx2,
    "sana-wm-refiner": _sana_wm_refiner,
}
