"""What the package knows about each family of video transformers, in one table.

A new model family is one :class:`ModelFamily` entry in :data:`FAMILIES`: which diffusers
classes it covers, where the text sits in its joint self-attention, how its latent is laid
out and patched, and which schedule preset (with the reference's stride and cache interval)
fits it. ``apply(pipe)`` reads it to give the pass the latent grid, the CLI and calibration to
find the text and the grid, and :func:`asymrnr_fx.enable_context_parallel` to find the
context-parallel plan shipped for a family whose diffusers class has none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .defaults import DEFAULT_CACHE_INTERVAL, DEFAULT_STRIDE

__all__ = ["ModelFamily", "FAMILIES", "family_of", "patch_sizes", "latent_grid", "pipeline_grid"]


@dataclass(frozen=True)
class ModelFamily:
    """One family of diffusers video transformers."""

    name: str
    classes: tuple[str, ...]  # diffusers transformer class names
    text_side: str | None  # text "before" / "after" the video in joint self-attention; None: cross
    frames_axis: int  # where frames sit in the 5-D latent: 1 (B, F, C, H, W) or 2 (B, C, F, H, W)
    preset: str | None = None  # the schedule preset (and so stride / cache interval) for it
    tiny: str | None = None  # its tiny random-weight config in asymrnr_fx.tiny_models
    channels_last: bool = False  # a (B, F, H, W, C) latent (Kandinsky)

    @property
    def stride(self) -> tuple[int, int, int]:
        """The reference's partition stride for this family (the preset's)."""
        from .schedules.presets import PRESETS

        return PRESETS[self.preset].stride if self.preset else DEFAULT_STRIDE

    @property
    def context_parallel(self) -> Any:
        """The context-parallel plan this package ships for the family
        (:class:`asymrnr_fx.cp_plans.ShippedPlan`), or None (diffusers' own, or none)."""
        from .cp_plans import SHIPPED_PLANS

        return SHIPPED_PLANS.get(self.name)

    @property
    def cache_interval(self) -> int:
        """The reference's matching cache interval for this family (the preset's)."""
        from .schedules.presets import PRESETS

        return PRESETS[self.preset].cache_interval if self.preset else DEFAULT_CACHE_INTERVAL


FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily(name="cogvideox", classes=("CogVideoXTransformer3DModel", "ConsisIDTransformer3DModel"),
                text_side="before", frames_axis=1, preset="cogvideox-2b", tiny="cogvideox"),
    ModelFamily(name="hunyuanvideo",
                classes=("HunyuanVideoTransformer3DModel", "HunyuanVideoFramepackTransformer3DModel"),
                text_side="after", frames_axis=2, preset="hunyuanvideo", tiny="hunyuanvideo"),
    ModelFamily(name="hunyuanvideo15", classes=("HunyuanVideo15Transformer3DModel",), text_side="after",
                frames_axis=2, preset="hunyuanvideo", tiny="hunyuanvideo15"),
    ModelFamily(name="mochi", classes=("MochiTransformer3DModel",), text_side="after", frames_axis=2,
                preset="mochi", tiny="mochi"),
    ModelFamily(name="wan",
                classes=("WanTransformer3DModel", "WanVACETransformer3DModel", "ChronoEditTransformer3DModel", "SkyReelsV2Transformer3DModel", "WanAnimateTransformer3DModel", "WanAnimate2Transformer3DModel"),
                text_side=None, frames_axis=2, preset="wan2.1", tiny="wan"),
    ModelFamily(name="ltx-video",
                classes=("LTXVideoTransformer3DModel", "LTX2VideoTransformer3DModel", "SanaWMLTX2RefinerTransformer3DModel"),
                text_side=None, frames_axis=2, preset="ltx-video", tiny="ltxvideo"),
    ModelFamily(name="cosmos", classes=("CosmosTransformer3DModel",), text_side=None, frames_axis=2,
                preset=None, tiny="cosmos"),
    ModelFamily(name="easyanimate", classes=("EasyAnimateTransformer3DModel",), text_side="before",
                frames_axis=2, preset=None, tiny="easyanimate"),
    ModelFamily(name="allegro", classes=("AllegroTransformer3DModel",), text_side=None, frames_axis=2,
                preset=None, tiny="allegro"),
    ModelFamily(name="latte", classes=("LatteTransformer3DModel",), text_side=None, frames_axis=2,
                preset=None, tiny="latte"),
    ModelFamily(name="anyflow", classes=("AnyFlowTransformer3DModel", "AnyFlowFARTransformer3DModel"),
                text_side=None, frames_axis=1, preset="wan2.1", tiny="anyflow"),
    ModelFamily(name="helios", classes=("HeliosTransformer3DModel",), text_side=None, frames_axis=2,
                preset="wan2.1", tiny="helios"),
    ModelFamily(name="motif-video", classes=("MotifVideoTransformer3DModel",), text_side="after",
                frames_axis=2, preset=None, tiny="motif-video"),
    ModelFamily(name="joyimage",
                classes=("JoyImageEditTransformer3DModel", "JoyImageEditPlusTransformer3DModel"),
                text_side=None, frames_axis=2, preset=None, tiny="joyimage-edit"),
    ModelFamily(name="sana-video", classes=("SanaVideoTransformer3DModel", "SanaWMTransformer3DModel"),
                text_side=None, frames_axis=2, preset=None, tiny="sana-video"),
    ModelFamily(name="minimax-h3", classes=("MiniMaxH3Transformer3DModel",), text_side=None, frames_axis=2,
                preset=None, tiny="minimax-h3"),
    ModelFamily(name="cosmos3", classes=("Cosmos3OmniTransformer",), text_side=None, frames_axis=2,
                preset=None, tiny="cosmos3-omni"),
    ModelFamily(name="kandinsky",
                classes=("Kandinsky5Transformer3DModel", "Kandinsky6Transformer3DModel", "Kandinsky6SRTransformer3DModel"),
                text_side=None, frames_axis=1, preset=None, tiny="kandinsky5", channels_last=True),
)


def family_of(model: Any) -> ModelFamily | None:
    """The family of a transformer (instance, class or class name), or None when unknown."""
    if isinstance(model, str):
        name = model
    else:
        name = (model if isinstance(model, type) else type(model)).__name__
    return next((f for f in FAMILIES if name in f.classes), None)


def patch_sizes(config: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(t, h, w)`` patch sizes from a diffusers config: ``patch_size`` (an int, or Wan's
    ``(t, h, w)``) and ``patch_size_t``."""
    patch = config.get("patch_size", 1) or 1
    if isinstance(patch, (tuple, list)):
        return tuple(int(p) for p in patch)  # type: ignore[return-value]
    return int(config.get("patch_size_t", 1) or 1), int(patch), int(patch)


def latent_grid(transformer: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[int, int, int] | None:
    """The video token grid of one forward call, from the latent shape and the patch sizes.

    Evidence for graphs that do not show the patch embedding (LTX-Video's pre-patchified
    tokens, repeated blocks compiled alone); a graph's own patch embedding wins. A 5-D latent
    of a class outside :data:`FAMILIES` gives None: its layout is unknown, and a wrong grid
    would partition the tokens wrongly (a channels-last latent read as channels-first did).
    """
    config = getattr(transformer, "config", None)
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    if config is None or not isinstance(hidden, torch.Tensor):
        return None
    pt, ph, pw = patch_sizes(config)
    if hidden.dim() == 5:
        family = family_of(transformer)
        if family is None:
            return None
        frames = hidden.shape[family.frames_axis]
        height, width = hidden.shape[2:4] if family.channels_last else hidden.shape[-2:]
    elif hidden.dim() == 3 and all(isinstance(kwargs.get(k), int) for k in ("num_frames", "height", "width")):
        frames, height, width = kwargs["num_frames"], kwargs["height"], kwargs["width"]
    else:
        return None
    return -(-frames // pt), height // ph, width // pw


def pipeline_grid(pipe: Any, height: int, width: int, frames: int) -> tuple[int, int, int]:
    """Video token grid (T, H, W) of a diffusers video pipeline at this output size."""
    def factor(names: tuple[str, ...], default: int) -> int:
        return next((int(getattr(pipe, n)) for n in names if getattr(pipe, n, None)), default)

    # The pipelines name their VAE compression factors differently.
    spatial = factor(("vae_scale_factor_spatial", "vae_spatial_compression_ratio",
                      "vae_spatial_scale_factor"), 8)
    temporal = factor(("vae_scale_factor_temporal", "vae_temporal_compression_ratio",
                       "vae_temporal_scale_factor"), 4)
    pt, ph, pw = patch_sizes(pipe.transformer.config)
    return ((frames - 1) // temporal + 1) // pt, height // spatial // ph, width // spatial // pw
