"""Tiny configs of the CogVideoX family: image-to-video (1.0: 2-D patches, learned positions;
1.5: (2, 2, 2) patches by a linear layer, no patch conv) and ConsisID."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import TinyModel, grid_of, randn, timesteps

__all__ = ["CONFIGS"]

_HEADS, _HEAD_DIM, _TEXT = 2, 16, 8


def _rotary(grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """What the pipeline computes and hands the transformer: 3-D RoPE over the token grid."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    frames, height, width = grid
    return get_3d_rotary_pos_embed(_HEAD_DIM, ((0, 0), (height, width)), (height, width), frames)


def _cogvideox_i2v(batch: int, seed: int, version: str) -> TinyModel:
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    frames, size = 4, 8
    v15 = version == "1.5"
    model = CogVideoXTransformer3DModel(
        num_attention_heads=_HEADS, attention_head_dim=_HEAD_DIM, in_channels=8, out_channels=4,
        time_embed_dim=16, text_embed_dim=32, num_layers=2, sample_width=size, sample_height=size,
        sample_frames=(frames - 1) * 4 + 1, patch_size=2, patch_size_t=2 if v15 else None,
        ofs_embed_dim=16 if v15 else None, max_text_seq_length=_TEXT,
        use_rotary_positional_embeddings=True, use_learned_positional_embeddings=not v15).eval()
    grid = grid_of(frames, size, size, (2 if v15 else 1, 2, 2))
    inputs = {"hidden_states": randn(batch, frames, 8, size, size), "encoder_hidden_states": randn(batch, _TEXT, 32),
              "timestep": timesteps(batch), "image_rotary_emb": _rotary(grid), "return_dict": False}
    if v15:
        inputs["ofs"] = torch.full((batch,), 2.0)
    notes = "image: latent channels of the grid"
    if v15:
        notes += "; patches by a linear layer (no patch conv: the grid comes from apply())"
    return TinyModel(f"cogvideox{'1.5' if v15 else ''}-i2v", model, inputs, grid, 2, notes)


def _consisid(batch: int, seed: int) -> TinyModel:
    from diffusers import ConsisIDTransformer3DModel

    torch.manual_seed(seed)
    frames, size = 4, 8
    model = ConsisIDTransformer3DModel(
        num_attention_heads=_HEADS, attention_head_dim=_HEAD_DIM, in_channels=8, out_channels=4,
        time_embed_dim=16, text_embed_dim=32, num_layers=2, sample_width=size, sample_height=size,
        sample_frames=(frames - 1) * 4 + 1, patch_size=2, max_text_seq_length=_TEXT, cross_attn_interval=1,
        is_kps=False, is_train_face=True, cross_attn_dim_head=1, cross_attn_num_heads=1, LFE_id_dim=2,
        LFE_vit_dim=2, LFE_depth=5, LFE_dim_head=8, LFE_num_heads=2, LFE_num_id_token=1, LFE_num_querie=1,
        LFE_output_dim=_HEADS * _HEAD_DIM * 2 // 3, LFE_ff_mult=1, LFE_num_scale=1,  # its kv dim
        use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True).eval()
    grid = grid_of(frames, size, size, (1, 2, 2))
    inputs = {"hidden_states": randn(batch, frames, 8, size, size), "encoder_hidden_states": randn(batch, _TEXT, 32),
              "timestep": timesteps(batch), "image_rotary_emb": _rotary(grid), "id_cond": randn(batch, 2),
              "id_vit_hidden": [randn(batch, 2, 2)], "return_dict": False}
    return TinyModel("consisid", model, inputs, grid, 2,
                     "face identity: perceiver cross-attention into the video (matmul attention, not SDPA)")


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


CONFIGS: dict[str, Callable[[int, int], TinyModel]] = {
    "cogvideox": _cogvideox,
    "cogvideox-i2v": lambda batch, seed: _cogvideox_i2v(batch, seed, "1.0"),
    "cogvideox1.5-i2v": lambda batch, seed: _cogvideox_i2v(batch, seed, "1.5"),
    "consisid": _consisid,
}
