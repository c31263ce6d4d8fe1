"""Tiny configs of the remaining video transformers: MiniMax-H3 (packed video + audio + text),
Motif-Video, SANA-Video and SANA-WM (linear attention), JoyImage-Edit (+ Plus), Cosmos 3 Omni."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import TinyModel, grid_of, randn, timesteps

__all__ = ["CONFIGS"]

_FRAMES, _SIZE, _TEXT = 4, 8, 6


def _minimax_h3(batch: int, seed: int) -> TinyModel:
    from diffusers import MiniMaxH3Transformer3DModel

    torch.manual_seed(seed)
    model = MiniMaxH3Transformer3DModel(
        num_attention_heads=2, attention_head_dim=16, hidden_size=24, num_layers=2, num_refiner_layers=1,
        ffn_dim=32, in_channels=4, audio_in_channels=6, patch_size=(1, 2, 2), text_dim=8, freq_dim=8,
        time_embed_hidden_dim=24, time_embed_dim=16, rope_freq_dim=2).eval()
    grid = grid_of(_FRAMES, _SIZE, _SIZE, (1, 2, 2))
    video, audio = grid[0] * grid[1] * grid[2], 6
    length = _TEXT + audio + video
    text_idx, audio_idx = torch.arange(_TEXT), torch.arange(_TEXT, _TEXT + audio)
    video_idx = torch.arange(_TEXT + audio, length)
    tags = torch.zeros(length, dtype=torch.long)  # 0 video, 1 text, 2 audio (the pipeline's packing)
    tags[text_idx], tags[audio_idx] = 1, 2
    steps = torch.zeros(length, dtype=torch.long)
    steps[audio_idx] = 1
    positions = torch.zeros(length, 3)
    positions[:, 0] = torch.arange(length, dtype=torch.float32)
    t, h, w = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in grid), indexing="ij")
    positions[video_idx] = torch.stack([t.flatten() + _TEXT + audio, h.flatten(), w.flatten()], -1)
    inputs = {"hidden_states": randn(batch, video, 16), "audio_hidden_states": randn(batch, audio, 6),
              "encoder_hidden_states": randn(batch, _TEXT, 8), "timestep": torch.tensor([0.7, 0.3]),
              "timestep_indices": steps, "token_tags": tags, "position_ids": positions,
              "video_indices": video_idx, "audio_indices": audio_idx, "text_indices": text_idx,
              "return_dict": False}
    return TinyModel("minimax-h3", model, inputs, grid, 2,
                     "one packed sequence of text, audio and video tokens placed by index tensors")


def _motif(batch: int, seed: int) -> TinyModel:
    from diffusers import MotifVideoTransformer3DModel

    torch.manual_seed(seed)
    model = MotifVideoTransformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=1,
        num_single_layers=1, num_decoder_layers=0, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
        text_embed_dim=16, image_embed_dim=8, rope_axes_dim=(4, 4, 4)).eval()
    inputs = {"hidden_states": randn(batch, 9, _FRAMES, _SIZE, _SIZE), "timestep": timesteps(batch),
              "encoder_hidden_states": randn(batch, _TEXT, 16), "image_embeds": randn(batch, 3, 8),
              "return_dict": False}
    return TinyModel("motif-video", model, inputs, grid_of(_FRAMES, _SIZE, _SIZE, (1, 2, 2)), 2,
                     "image: latent channels of the grid + image tokens beside the prompt")


def _sana_video(batch: int, seed: int) -> TinyModel:
    from diffusers import SanaVideoTransformer3DModel

    torch.manual_seed(seed)
    model = SanaVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=2,
        num_cross_attention_heads=2, cross_attention_head_dim=12, cross_attention_dim=24, caption_channels=16,
        mlp_ratio=2.5, sample_size=_SIZE, patch_size=(1, 2, 2), norm_elementwise_affine=False,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32).eval()
    inputs = {"hidden_states": randn(batch, 4, _FRAMES, _SIZE, _SIZE), "timestep": timesteps(batch),
              "encoder_hidden_states": randn(batch, _TEXT, 16), "return_dict": False}
    return TinyModel("sana-video", model, inputs, grid_of(_FRAMES, _SIZE, _SIZE, (1, 2, 2)), 2,
                     "self-attention is linear (ReLU kernel): no softmax attention to reduce")


def _sana_wm(batch: int, seed: int) -> TinyModel:
    from diffusers import SanaWMTransformer3DModel

    torch.manual_seed(seed)
    model = SanaWMTransformer3DModel(
        in_channels=4, num_layers=2, hidden_size=32, num_attention_heads=2, patch_size=(1, 1, 1),
        softmax_every_n=2, linear_head_dim=16, t_kernel_size=3, conv_kernel_size=4, caption_channels=8,
        mlp_ratio=2.0, chunk_plucker_channels=8, chunk_plucker_post_attn_blocks=2).eval()
    size = 4
    c2w = torch.eye(4).repeat(batch, _FRAMES, 1, 1)
    c2w[..., 2, 3] = torch.arange(_FRAMES, dtype=torch.float32) * 0.1  # a forward camera move
    intrinsics = torch.tensor([float(size), float(size), size / 2, size / 2]).expand(batch, _FRAMES, 4)
    inputs = {"hidden_states": randn(batch, 4, _FRAMES, size, size),
              "timestep": torch.full((batch, 1, _FRAMES), 500.0), "encoder_hidden_states": randn(batch, 1, _TEXT, 8),
              "encoder_attention_mask": torch.ones(batch, _TEXT, dtype=torch.long),
              "camera_conditions": torch.cat([c2w.flatten(-2), intrinsics], -1),
              "chunk_plucker": randn(batch, 8, _FRAMES, size, size), "return_dict": False}
    return TinyModel("sana-wm", model, inputs, grid_of(_FRAMES, size, size, (1, 1, 1)), 2,
                     "world model: gated-delta linear attention, every 2nd block softmax; camera rays")


def _joyimage(batch: int, seed: int, plus: bool) -> TinyModel:
    from diffusers import JoyImageEditPlusTransformer3DModel, JoyImageEditTransformer3DModel

    torch.manual_seed(seed)
    config = {"patch_size": [1, 2, 2], "in_channels": 4, "hidden_size": 32, "num_attention_heads": 2,
              "text_dim": 16, "num_layers": 2, "rope_dim_list": [4, 6, 6], "theta": 256}
    frames = 2  # the edited image and its reference, stacked as frames
    inputs = {"timestep": timesteps(batch).float(), "encoder_hidden_states": randn(batch, _TEXT, 16),
              "return_dict": False}
    if plus:
        model = JoyImageEditPlusTransformer3DModel(**config).eval()
        tokens = _SIZE // 2 * (_SIZE // 2)
        # Pre-patchified: one (C, 1, 2, 2) patch per token, the images' token grids in shape_list.
        inputs["hidden_states"] = randn(batch, frames * tokens, 4, 1, 2, 2)
        inputs["shape_list"] = [[(1, _SIZE // 2, _SIZE // 2)] * frames] * batch
        notes = "images of several sizes, pre-patchified and packed by shape_list"
    else:
        model = JoyImageEditTransformer3DModel(**config).eval()
        inputs["hidden_states"] = randn(batch, 4, frames, _SIZE, _SIZE)
        notes = "image editing: source and target images as frames"
    return TinyModel("joyimage-edit-plus" if plus else "joyimage-edit", model, inputs,
                     grid_of(frames, _SIZE, _SIZE, (1, 2, 2)), 2, notes)


def _cosmos3(batch: int, seed: int) -> TinyModel:
    from diffusers import Cosmos3OmniTransformer

    torch.manual_seed(seed)
    model = Cosmos3OmniTransformer(
        head_dim=8, hidden_act="relu2", hidden_size=16, intermediate_size=32, latent_channel=2,
        latent_patch_size=1, num_attention_heads=2, num_hidden_layers=2, num_key_value_heads=1,
        patch_latent_dim=2, qk_norm_for_text=False, rms_norm_eps=1e-5, rope_axes_dim=[2, 2, 4],
        rope_theta=1e8, vocab_size=32).eval()
    grid = (2, 4, 4)  # one sample: the omni model packs every modality into one sequence
    vision = grid[0] * grid[1] * grid[2]
    length = 2 + vision
    indexes = torch.arange(2, length)
    inputs = {"input_ids": torch.tensor([1, 2]), "text_indexes": torch.tensor([0, 1]),
              "position_ids": torch.zeros((3, length), dtype=torch.long), "und_len": 2, "sequence_length": length,
              "vision_tokens": [randn(1, 2, *grid)], "vision_token_shapes": [grid],
              "vision_sequence_indexes": indexes, "vision_mse_loss_indexes": indexes,
              "vision_timesteps": torch.ones(vision), "vision_noisy_frame_indexes": [torch.tensor([0, 1])],
              "return_dict": False}
    return TinyModel("cosmos3-omni", model, inputs, grid, 2,
                     "omni: text, vision, sound and action tokens packed by index; grouped-query attention")


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


CONFIGS: dict[str, Callable[[int, int], TinyModel]] = {
    "mochi": _mochi,
    "minimax-h3": _minimax_h3,
    "motif-video": _motif,
    "sana-video": _sana_video,
    "sana-wm": _sana_wm,
    "joyimage-edit": lambda batch, seed: _joyimage(batch, seed, False),
    "joyimage-edit-plus": lambda batch, seed: _joyimage(batch, seed, True),
    "cosmos3-omni": _cosmos3,
}
