"""The real-size FLOP counts, checked by hand on a tiny config of a real class."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.real_sizes import (
    MODELS,
    RealModel,
    forward_counts,
    matching_flops,
    preset_saving,
    sdpa_flops,
)

HEADS, HEAD_DIM, LAYERS, TEXT = 2, 8, 2, 6
LATENT = (4, 3, 8, 8)  # channels, frames, height, width -> grid (3, 4, 4) under patch 2


def _inputs(model: RealModel) -> dict:
    channels, frames, height, width = model.latent
    return {"hidden_states": torch.empty(1, frames, channels, height, width, device="meta", dtype=torch.bfloat16),
            "encoder_hidden_states": torch.empty(1, TEXT, 16, device="meta", dtype=torch.bfloat16),
            "timestep": torch.empty(1, dtype=torch.long, device="meta"), "return_dict": False}


TINY = RealModel("tiny CogVideoX", "CogVideoXTransformer3DModel",
                 {"num_attention_heads": HEADS, "attention_head_dim": HEAD_DIM, "num_layers": LAYERS,
                  "in_channels": 4, "out_channels": 4, "text_embed_dim": 16, "time_embed_dim": 8,
                  "sample_frames": 9, "sample_height": 8, "sample_width": 8, "max_text_seq_length": TEXT},
                 "tiny", LATENT, TEXT, ("cogvideox-2b",), 10, _inputs)


def test_sdpa_and_matching_are_counted_as_by_hand() -> None:
    # Q K^T and P V: 2 * Lq * Lkv * D each, per batch item and head.
    assert sdpa_flops(2, 3, 10, 6, 4) == 2 * 3 * (2 * 10 * 6 * 4) * 2
    assert matching_flops(2, 3, 50, 7, 4) == 2 * 3 * 2 * 50 * 7 * 4


def test_a_tiny_forward_is_counted_as_by_hand() -> None:
    counts = forward_counts(TINY)
    video = math.prod(counts.grid)
    assert counts.grid == (3, 4, 4) and len(counts.self_attention) == LAYERS
    assert counts.self_attention[0] == (HEADS, TEXT + video, HEAD_DIM)
    # Every attention call is one video+text self-attention: 4 * H * L^2 * D each.
    assert counts.attention == LAYERS * 4 * HEADS * (TEXT + video) ** 2 * HEAD_DIM
    assert counts.attention < counts.blocks < counts.forward


def test_a_uniform_cut_saves_what_the_hand_count_says() -> None:
    counts = forward_counts(TINY)
    video = math.prod(counts.grid)
    length = TEXT + video
    kept = int(video * 0.5)  # 24 of 48 video tokens; the 2x2x2 partition has 1 * 2 * 2 = 4 dst
    num_dst = 1 * 2 * 2
    per_site = 4 * HEADS * HEAD_DIM * (length * length - length * (TEXT + kept))
    windows = math.ceil(TINY.steps / 5)
    matching = LAYERS * windows * 2 * HEADS * (video - num_dst) * num_dst * HEAD_DIM
    expected = (LAYERS * TINY.steps * per_site - matching) / (TINY.steps * counts.forward)
    result = preset_saving(TINY, counts, None, kv_ratio=0.5)
    assert result["saved_share"] == pytest.approx(expected, rel=1e-12)
    assert result["bound"] == pytest.approx(1 / (1 - expected))
    assert preset_saving(TINY, counts, None, kv_ratio=0.0)["saved_share"] == 0.0


def test_a_step_cache_adds_the_blocks_it_skips() -> None:
    counts = forward_counts(TINY)
    alone = preset_saving(TINY, counts, None, kv_ratio=0.5)["saved_share"]
    stacked = preset_saving(TINY, counts, None, kv_ratio=0.5, cached_steps=0.5)["saved_share"]
    skipped = 0.5 * (counts.blocks - counts.first_block) / counts.forward
    assert stacked == pytest.approx(skipped + 0.5 * alone)


def test_every_real_model_names_presets_that_exist() -> None:
    from asymrnr_fx.schedules.presets import PRESETS

    assert all(p in PRESETS for model in MODELS for p in model.presets)
