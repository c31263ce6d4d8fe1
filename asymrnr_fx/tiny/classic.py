"""Tiny configs of the other text-to-video transformers: Cosmos (text-to-world and
video-to-world), EasyAnimate, Latte and Allegro."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import TinyModel, grid_of, randn, timesteps

__all__ = ["CONFIGS"]

_FRAMES, _SIZE = 4, 8


def _cosmos(batch: int, seed: int, video_to_world: bool) -> TinyModel:
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(seed)
    channels = 5 if video_to_world else 4  # the model concatenates the condition mask channel
    # concat_padding_mask (the released configs) resizes the mask with torchvision, which the
    # tests do not install; it adds one input channel and changes no attention.
    model = CosmosTransformer3DModel(
        in_channels=channels, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=2,
        mlp_ratio=2, text_embed_dim=16, adaln_lora_dim=4, max_size=(4, 32, 32), patch_size=(1, 2, 2),
        rope_scale=(2.0, 1.0, 1.0), concat_padding_mask=False, extra_pos_embed_type="learnable").eval()
    inputs = {"hidden_states": randn(batch, 4, _FRAMES, _SIZE, _SIZE), "timestep": timesteps(batch),
              "encoder_hidden_states": randn(batch, 6, 16), "attention_mask": torch.ones(batch, 6),
              "fps": 30, "return_dict": False}
    notes = "patches by a linear layer (no patch conv: the grid comes from apply())"
    if video_to_world:
        condition = torch.zeros(batch, 1, _FRAMES, _SIZE, _SIZE)
        condition[:, :, :1] = 1.0  # the conditioning frames are frames of the grid
        inputs["condition_mask"] = condition
        notes = "conditioning frames: frames of the grid (mask channel); " + notes
    return TinyModel("cosmos-v2w" if video_to_world else "cosmos", model, inputs,
                     grid_of(_FRAMES, _SIZE, _SIZE, (1, 2, 2)), 2, notes)


def _easyanimate(batch: int, seed: int) -> TinyModel:
    from diffusers import EasyAnimateTransformer3DModel

    torch.manual_seed(seed)
    model = EasyAnimateTransformer3DModel(
        attention_head_dim=16, num_attention_heads=2, in_channels=4, mmdit_layers=2, num_layers=2,
        out_channels=4, patch_size=2, sample_height=_SIZE * 8, sample_width=_SIZE * 8, text_embed_dim=16,
        time_embed_dim=8, time_position_encoding_type="3d_rope", timestep_activation_fn="silu").eval()
    inputs = {"hidden_states": randn(batch, 4, _FRAMES, _SIZE, _SIZE), "timestep": timesteps(batch),
              "encoder_hidden_states": randn(batch, 8, 16), "return_dict": False}
    return TinyModel("easyanimate", model, inputs, grid_of(_FRAMES, _SIZE, _SIZE, (1, 2, 2)), 2)


def _latte(batch: int, seed: int) -> TinyModel:
    from diffusers import LatteTransformer3DModel

    torch.manual_seed(seed)
    model = LatteTransformer3DModel(
        sample_size=_SIZE, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=2,
        caption_channels=8, in_channels=4, cross_attention_dim=16, out_channels=8, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, video_length=_FRAMES).eval()
    inputs = {"hidden_states": randn(batch, 4, _FRAMES, _SIZE, _SIZE), "timestep": timesteps(batch),
              "encoder_hidden_states": randn(batch, 6, 8), "enable_temporal_attentions": True,
              "return_dict": False}
    return TinyModel("latte", model, inputs, grid_of(_FRAMES, _SIZE, _SIZE, (1, 2, 2)), 2,
                     "factorised: spatial attention per frame, temporal attention per position")


def _allegro(batch: int, seed: int) -> TinyModel:
    from diffusers import AllegroTransformer3DModel

    torch.manual_seed(seed)
    model = AllegroTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, num_layers=2,
        cross_attention_dim=16, sample_width=_SIZE, sample_height=_SIZE, sample_frames=_FRAMES,
        caption_channels=8).eval()
    inputs = {"hidden_states": randn(batch, 4, _FRAMES, _SIZE, _SIZE), "timestep": timesteps(batch),
              "encoder_hidden_states": randn(batch, 6, 8), "return_dict": False}
    return TinyModel("allegro", model, inputs, grid_of(_FRAMES, _SIZE, _SIZE, (1, 2, 2)), 2)


CONFIGS: dict[str, Callable[[int, int], TinyModel]] = {
    "cosmos": lambda batch, seed: _cosmos(batch, seed, False),
    "cosmos-v2w": lambda batch, seed: _cosmos(batch, seed, True),
    "easyanimate": _easyanimate,
    "latte": _latte,
    "allegro": _allegro,
}
