"""Tiny configs of the models built on Wan's blocks: AnyFlow (bidirectional and FAR causal)
and Helios (history latents)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import TinyModel, grid_of, randn, timesteps

__all__ = ["CONFIGS"]

_FRAMES, _SIZE, _TEXT = 4, 8, 6
_GRID = grid_of(_FRAMES, _SIZE, _SIZE, (1, 2, 2))
_BLOCK = {"num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 4, "out_channels": 4,
          "text_dim": 16, "freq_dim": 16, "ffn_dim": 32, "num_layers": 2}


def _anyflow(batch: int, seed: int, causal: bool) -> TinyModel:
    from diffusers import AnyFlowFARTransformer3DModel, AnyFlowTransformer3DModel

    torch.manual_seed(seed)
    if causal:
        model = AnyFlowFARTransformer3DModel(**_BLOCK, rope_max_seq_len=32, compressed_patch_size=(1, 4, 4),
                                             full_chunk_limit=3, chunk_partition=(2, 2))
    else:
        model = AnyFlowTransformer3DModel(**_BLOCK, rope_max_seq_len=32)
    model.eval()
    inputs = {"hidden_states": randn(batch, _FRAMES, 4, _SIZE, _SIZE),
              "timestep": torch.full((batch, _FRAMES), 500.0), "r_timestep": torch.full((batch, _FRAMES), 250.0),
              "encoder_hidden_states": randn(batch, _TEXT, 16), "return_dict": False}
    if causal:
        inputs["chunk_partition"] = [2, 2]
        return TinyModel("anyflow-far", model, inputs, _GRID, 2,
                         "chunk-causal flex attention with a BlockMask (its processor allows only flex)")
    return TinyModel("anyflow", model, inputs, _GRID, 2, "per-frame timesteps (flow map t -> r)")


def _helios(batch: int, seed: int) -> TinyModel:
    from diffusers import HeliosTransformer3DModel

    torch.manual_seed(seed)
    model = HeliosTransformer3DModel(
        **_BLOCK, patch_size=(1, 2, 2), rope_dim=(2, 2, 4), has_multi_term_memory_patch=True,
        guidance_cross_attn=True, zero_history_timestep=True, is_amplify_history=False).eval()
    history = 1

    def indices(count: int, start: int) -> torch.Tensor:
        return torch.arange(start, start + count).unsqueeze(0).expand(batch, -1).float()

    inputs = {"hidden_states": randn(batch, 4, _FRAMES, _SIZE, _SIZE), "timestep": timesteps(batch),
              "encoder_hidden_states": randn(batch, _TEXT, 16),
              "indices_hidden_states": indices(_FRAMES, 6),
              "indices_latents_history_short": indices(history, 5),
              "indices_latents_history_mid": indices(history, 4),
              "indices_latents_history_long": indices(4 * history, 0),
              "latents_history_short": randn(batch, 4, history, _SIZE, _SIZE),
              "latents_history_mid": randn(batch, 4, history, _SIZE, _SIZE),
              "latents_history_long": randn(batch, 4, 4 * history, _SIZE, _SIZE), "return_dict": False}
    return TinyModel("helios", model, inputs, _GRID, 2,
                     "short/mid/long history latents: extra tokens before the video, never reduced")


CONFIGS: dict[str, Callable[[int, int], TinyModel]] = {
    "anyflow": lambda batch, seed: _anyflow(batch, seed, False),
    "anyflow-far": lambda batch, seed: _anyflow(batch, seed, True),
    "helios": _helios,
}
