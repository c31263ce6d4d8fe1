"""Tiny random-weight diffusers pipelines of the major video families, built offline.

Each builder returns a real diffusers pipeline (its scheduler, its VAE, a word-level tokenizer
and a tiny text encoder from ``transformers``) and the call arguments of one small generation.
They need the test extra (``transformers``, ``tokenizers``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["PIPELINES", "build_pipeline"]

_WORDS = "a red cat on the blue moon dance monkey negative".split()


def _tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "<s>": 3, **{w: i + 4 for i, w in enumerate(_WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", bos_token="<s>")


def _t5(d_model: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=32, d_model=d_model, d_kv=8, d_ff=32, num_layers=1,
                                   num_heads=2)).eval()


def _image() -> Any:
    from PIL import Image

    return Image.new("RGB", (32, 32), (200, 40, 40))


def _call(**extra: Any) -> dict[str, Any]:
    return {"prompt": "a red cat", "negative_prompt": "negative", "num_inference_steps": 4,
            "guidance_scale": 5.0, "height": 32, "width": 32, "num_frames": 9, "max_sequence_length": 8,
            "output_type": "latent", **extra}


def _cogvideox(image: bool) -> tuple[Any, dict[str, Any]]:
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=8 if image else 4, out_channels=4,
        time_embed_dim=16, text_embed_dim=32, num_layers=2, sample_width=4, sample_height=4, sample_frames=9,
        patch_size=2, max_text_seq_length=8, use_rotary_positional_embeddings=image).eval()
    cls = CogVideoXImageToVideoPipeline if image else CogVideoXPipeline
    pipe = cls(tokenizer=_tokenizer(), text_encoder=_t5(32), vae=vae, transformer=transformer,
               scheduler=CogVideoXDDIMScheduler())
    return pipe, _call(**({"image": _image()} if image else {}))


def _wan_transformer(in_channels: int, image_dim: int | None = None) -> Any:
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=in_channels,
        out_channels=4, text_dim=32, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
        image_dim=image_dim).eval()


def _wan(variant: str) -> tuple[Any, dict[str, Any]]:
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanPipeline,
    )

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    parts: dict[str, Any] = {"tokenizer": _tokenizer(), "text_encoder": _t5(32), "vae": vae,
                             "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0)}
    image = variant.endswith("i2v")
    in_channels = 12 if image else 4  # + 4 mask channels + 4 image latent channels
    if variant == "wan2.1-i2v":
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

        parts["transformer"] = _wan_transformer(in_channels, image_dim=4)
        parts["image_encoder"] = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=4, projection_dim=4, num_hidden_layers=1, num_attention_heads=2, image_size=32,
            intermediate_size=8, patch_size=8)).eval()
        parts["image_processor"] = CLIPImageProcessor(crop_size=32, size=32)
    else:
        parts["transformer"] = _wan_transformer(in_channels)
    if variant.startswith("wan2.2"):  # two experts: high noise, then low noise
        parts["transformer_2"] = _wan_transformer(in_channels)
        parts["boundary_ratio"] = 0.875
    pipe = (WanImageToVideoPipeline if image else WanPipeline)(**parts)
    call = _call(**({"image": _image()} if image else {}))
    if variant == "wan2.1-i2v":
        call["max_sequence_length"] = 512  # Wan's image attention takes the prompt as the last 512 tokens
    return pipe, call


def _hunyuan() -> tuple[Any, dict[str, Any]]:
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4)).eval()
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, spatial_compression_ratio=8, temporal_compression_ratio=4)
    llama = LlamaModel(LlamaConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                   num_hidden_layers=3, vocab_size=32, pad_token_id=0)).eval()
    clip = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2,
                                        num_hidden_layers=1, vocab_size=32, projection_dim=8)).eval()
    pipe = HunyuanVideoPipeline(text_encoder=llama, tokenizer=_tokenizer(), transformer=transformer, vae=vae,
                                scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=clip,
                                tokenizer_2=_tokenizer())
    call = _call(prompt_template={"template": "{}", "crop_start": 0}, guidance_scale=1.0,
                 true_cfg_scale=1.0, max_sequence_length=8)
    call.pop("negative_prompt")
    return pipe, call


def _ltx(image: bool) -> tuple[Any, dict[str, Any]]:
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXImageToVideoPipeline,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, num_layers=2, caption_channels=32).eval()
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False), upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1), timestep_conditioning=False, patch_size=1, patch_size_t=1,
        encoder_causal=True, decoder_causal=False)
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    cls = LTXImageToVideoPipeline if image else LTXPipeline
    pipe = cls(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
               text_encoder=_t5(32), tokenizer=_tokenizer())
    return pipe, _call(**({"image": _image()} if image else {}))


def _mochi() -> tuple[Any, dict[str, Any]]:
    from diffusers import (
        AutoencoderKLMochi,
        FlowMatchEulerDiscreteScheduler,
        MochiPipeline,
        MochiTransformer3DModel,
    )

    torch.manual_seed(0)
    transformer = MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=16,
        in_channels=12, text_embed_dim=32, time_embed_dim=4, max_sequence_length=8).eval()
    vae = AutoencoderKLMochi(latent_channels=12, out_channels=3, encoder_block_out_channels=(32,) * 4,
                             decoder_block_out_channels=(32,) * 4, layers_per_block=(1, 1, 1, 1, 1))
    pipe = MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=_t5(32),
                         tokenizer=_tokenizer(), transformer=transformer)
    return pipe, _call(num_frames=7, height=64, width=64)


PIPELINES: dict[str, Callable[[], tuple[Any, dict[str, Any]]]] = {
    "cogvideox": lambda: _cogvideox(False),
    "cogvideox-i2v": lambda: _cogvideox(True),
    "wan2.1": lambda: _wan("wan2.1"),
    "wan2.1-i2v": lambda: _wan("wan2.1-i2v"),
    "wan2.2": lambda: _wan("wan2.2"),
    "wan2.2-i2v": lambda: _wan("wan2.2-i2v"),
    "hunyuanvideo": _hunyuan,
    "ltxvideo": lambda: _ltx(False),
    "ltxvideo-i2v": lambda: _ltx(True),
    "mochi": _mochi,
}


def build_pipeline(name: str) -> tuple[Any, dict[str, Any]]:
    """A tiny pipeline and the arguments of one generation (latents out)."""
    if name not in PIPELINES:
        raise ValueError(f"unknown tiny pipeline {name!r}; choose one of {sorted(PIPELINES)}")
    pipe, call = PIPELINES[name]()
    pipe.set_progress_bar_config(disable=True)
    return pipe, call
