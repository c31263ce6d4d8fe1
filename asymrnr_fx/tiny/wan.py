"""Tiny configs of the Wan family: Wan 2.1 image-to-video, Wan 2.2 (per-token timesteps), VACE,
Animate, ChronoEdit and SkyReels-V2 (plain and diffusion forcing)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import TinyModel, grid_of, randn, timesteps

__all__ = ["CONFIGS"]

# One size for the family: 2 heads x 8, 4 latent frames of 8x8 under (1, 2, 2) patches.
_WAN = {"patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 8, "text_dim": 16,
        "freq_dim": 16, "ffn_dim": 32, "num_layers": 2, "rope_max_seq_len": 32}
_FRAMES, _SIZE, _TEXT = 4, 8, 6
_GRID = grid_of(_FRAMES, _SIZE, _SIZE, (1, 2, 2))


def _latent(batch: int, channels: int) -> torch.Tensor:
    return randn(batch, channels, _FRAMES, _SIZE, _SIZE)


def _text(batch: int, tokens: int = _TEXT) -> torch.Tensor:
    return randn(batch, tokens, 16)


def _wan_i2v(batch: int, seed: int) -> TinyModel:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**_WAN, in_channels=12, out_channels=4, image_dim=16,
                                  added_kv_proj_dim=16).eval()
    inputs = {"hidden_states": _latent(batch, 12), "timestep": timesteps(batch),
              # Wan's I2V attention takes the prompt as the last 512 tokens (hard-coded there).
              "encoder_hidden_states": _text(batch, 512), "encoder_hidden_states_image": randn(batch, 5, 16),
              "return_dict": False}
    return TinyModel("wan-i2v", model, inputs, _GRID, 2,
                     "image: latent channels of the video grid + CLIP tokens in the cross-attention")


def _wan22_ti2v(batch: int, seed: int) -> TinyModel:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**_WAN, in_channels=4, out_channels=4).eval()
    tokens = torch.full((batch, _FRAMES, _GRID[1] * _GRID[2]), 500, dtype=torch.long)
    tokens[:, 0] = 0  # the conditioning first frame is clean: its tokens get timestep 0
    inputs = {"hidden_states": _latent(batch, 4), "timestep": tokens.flatten(1),
              "encoder_hidden_states": _text(batch), "return_dict": False}
    return TinyModel("wan2.2-ti2v", model, inputs, _GRID, 2,
                     "per-token timesteps; the image is the grid's first frame")


def _wan_vace(batch: int, seed: int) -> TinyModel:
    from diffusers import WanVACETransformer3DModel

    torch.manual_seed(seed)
    model = WanVACETransformer3DModel(**_WAN, in_channels=4, out_channels=4, vace_layers=[0],
                                      vace_in_channels=12).eval()
    inputs = {"hidden_states": _latent(batch, 4), "timestep": timesteps(batch),
              "encoder_hidden_states": _text(batch), "control_hidden_states": _latent(batch, 12),
              "return_dict": False}
    return TinyModel("wan-vace", model, inputs, _GRID, 3,
                     "control video and masks: their own blocks over the same grid (rewritten as video)")


def _chronoedit(batch: int, seed: int) -> TinyModel:
    from diffusers import ChronoEditTransformer3DModel

    torch.manual_seed(seed)
    model = ChronoEditTransformer3DModel(**_WAN, in_channels=4, out_channels=4, rope_temporal_skip_len=2).eval()
    inputs = {"hidden_states": _latent(batch, 4), "timestep": timesteps(batch),
              "encoder_hidden_states": _text(batch), "return_dict": False}
    return TinyModel("chronoedit", model, inputs, _GRID, 2, "input and edited frames are frames of the grid")


def _wan_animate(batch: int, seed: int) -> TinyModel:
    from diffusers import WanAnimateTransformer3DModel

    torch.manual_seed(seed)
    model = WanAnimateTransformer3DModel(
        **{**_WAN, "num_layers": 2}, in_channels=12, latent_channels=4, out_channels=4, image_dim=16,
        motion_encoder_channel_sizes={"4": 16, "8": 16, "16": 16}, motion_encoder_size=16, motion_style_dim=8,
        motion_dim=4, motion_encoder_dim=16, face_encoder_hidden_dim=16, face_encoder_num_heads=2,
        inject_face_latents_blocks=2).eval()
    frames, size = 20, 4  # + the reference frame: 21 latent frames, what a 77-frame face segment encodes to
    inputs = {"hidden_states": randn(batch, 12, frames + 1, size, size), "timestep": timesteps(batch),
              "encoder_hidden_states": _text(batch), "encoder_hidden_states_image": randn(batch, 5, 16),
              "pose_hidden_states": randn(batch, 4, frames, size, size),
              "face_pixel_values": randn(batch, 3, 77, 16, 16), "return_dict": False}
    return TinyModel("wan-animate", model, inputs, grid_of(frames + 1, size, size, (1, 2, 2)), 2,
                     "reference image: the grid's first frame; pose: added to the grid; face: cross-attention")


def _wan_animate2(batch: int, seed: int) -> TinyModel:
    from diffusers import WanAnimate2Transformer3DModel
    from diffusers.models.transformers.transformer_wan_animate_2 import WanAnimate2KVCache

    torch.manual_seed(seed)
    model = WanAnimate2Transformer3DModel(
        patch_size=(1, 2, 2), text_len=_TEXT, in_dim=4 + 8, dim=16, ffn_dim=32, freq_dim=16, text_dim=16,
        out_dim=4, num_heads=2, num_layers=2, cross_attn_norm=True, use_img_emb=True).eval()
    frames = 2
    # The reference pass the pipeline runs once per segment: dense self-attention over the driving
    # video's latents, filling the K/V cache the denoising steps attend to.
    inputs = {"hidden_states": [randn(4, frames, _SIZE, _SIZE) for _ in range(batch)],
              "timestep": torch.tensor([1.0]), "encoder_hidden_states": [randn(_TEXT, 16) for _ in range(batch)],
              "condition_latents": [randn(8, frames, _SIZE, _SIZE) for _ in range(batch)],
              "encoder_hidden_states_image": randn(batch, 4, 1280), "kv_cache": WanAnimate2KVCache(2),
              "kv_cache_mode": "extract", "seq_len": frames * (_SIZE // 2) ** 2,
              "offset_grid_sizes": torch.tensor([[frames, _SIZE // 2, _SIZE // 2]] * batch), "return_dict": False}
    return TinyModel("wan-animate2", model, inputs, grid_of(frames, _SIZE, _SIZE, (1, 2, 2)), 2,
                     "reference pass: its self-attention takes K/V back through the cache it fills (not provably self-attention)")


def _skyreels(batch: int, seed: int, forcing: bool) -> TinyModel:
    from diffusers import SkyReelsV2Transformer3DModel

    torch.manual_seed(seed)
    model = SkyReelsV2Transformer3DModel(**_WAN, in_channels=4, out_channels=4).eval()
    inputs = {"hidden_states": _latent(batch, 4), "encoder_hidden_states": _text(batch), "return_dict": False}
    if forcing:  # diffusion forcing: a timestep per frame and block-causal attention
        model._set_ar_attention(2)  # what the diffusion-forcing pipeline does: blocks of 2 frames
        inputs.update(timestep=torch.tensor([[900, 700, 500, 300]] * batch), enable_diffusion_forcing=True)
        name, notes = "skyreels-v2-df", "diffusion forcing: per-frame timesteps, block-causal mask"
    else:
        inputs["timestep"] = timesteps(batch)
        name, notes = "skyreels-v2", ""
    return TinyModel(name, model, inputs, _GRID, 2, notes)


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


CONFIGS: dict[str, Callable[[int, int], TinyModel]] = {
    "wan": _wan,
    "wan-i2v": _wan_i2v,
    "wan2.2-ti2v": _wan22_ti2v,
    "wan-vace": _wan_vace,
    "wan-animate": _wan_animate,
    "wan-animate2": _wan_animate2,
    "chronoedit": _chronoedit,
    "skyreels-v2": lambda batch, seed: _skyreels(batch, seed, False),
    "skyreels-v2-df": lambda batch, seed: _skyreels(batch, seed, True),
}
