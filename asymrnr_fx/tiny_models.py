"""Tiny random-weight configs of the real diffusers video transformers.

Used by the tests and the CPU benchmarks: each entry builds the real diffusers class at a
size that compiles in seconds, plus matching example inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .tiny.base import TinyModel

__all__ = ["TinyModel", "TINY_MODELS", "build_tiny"]


def _cogvideox(batch: int, seed: int) -> TinyModel:
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    frames, height, width, text = 4, 8, 8, 8
    model = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        time_embed_dim=16, text_embed_dim=32, num_layers=2, sample_width=width,
        sample_height=height, sample_frames=(frames - 1) * 4 + 1, patch_size=2,
        max_text_seq_length=text, use_rotary_positional_embeddings=False,
    ).eval()
    inputs = {
        "hidden_states": torch.randn(batch, frames, 4, height, width),
        "encoder_hidden_states": torch.randn(batch, text, 32),
        "timestep": torch.full((batch,), 500, dtype=torch.long),
        "return_dict": False,
    }
    return TinyModel("cogvideox", model, inputs, (frames, height // 2, width // 2), 2)


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


def _wan(batch: int, seed: int) -> TinyModel:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    frames, height, width, text = 4, 8, 8, 8
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
        out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, rope_max_seq_len=32,
    ).eval()
    inputs = {
        "hidden_states": torch.randn(batch, 4, frames, height, width),
        "timestep": torch.full((batch,), 500, dtype=torch.long),
        "encoder_hidden_states": torch.randn(batch, text, 32),
        "return_dict": False,
    }
    return TinyModel("wan", model, inputs, (frames, height // 2, width // 2), 2)


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


def _mochi(batch: int, seed: int) -> TinyModel:
    from diffusers import MochiTransformer3DModel

    torch.manual_seed(seed)
    frames, height, width, text = 4, 8, 8, 6
    model = MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=16, num_layers=2,
        pooled_projection_dim=16, in_channels=4, text_embed_dim=32, time_embed_dim=16,
        max_sequence_length=text,
    ).eval()
    mask = torch.ones(batch, text, dtype=torch.bool)
    mask[:, -2:] = False
    inputs = {
        "hidden_states": torch.randn(batch, 4, frames, height, width),
        "encoder_hidden_states": torch.randn(batch, text, 32),
        "timestep": torch.full((batch,), 500, dtype=torch.long),
        "encoder_attention_mask": mask,
        "return_dict": False,
    }
    return TinyModel("mochi", model, inputs, (frames, height // 2, width // 2), 2)


TINY_MODELS: dict[str, Callable[[int, int], TinyModel]] = {
    "cogvideox": _cogvideox,
    "hunyuanvideo": _hunyuan,
    "wan": _wan,
    "ltxvideo": _ltx,
    "mochi": _mochi,
}


def _families() -> None:
    from .tiny import classic, cogvideox, hunyuan, kandinsky, ltx, others, wan, wan_derived

    for module in (cogvideox, wan, wan_derived, hunyuan, ltx, classic, kandinsky, others):
        TINY_MODELS.update(module.CONFIGS)


_families()


def build_tiny(name: str, batch: int = 1, seed: int = 0) -> TinyModel:
    """Build the tiny config of model ``name`` (one of ``TINY_MODELS``)."""
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {name!r}; choose one of {sorted(TINY_MODELS)}")
    return TINY_MODELS[name](batch, seed)
