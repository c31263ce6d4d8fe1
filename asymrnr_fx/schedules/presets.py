"""Built-in schedules for the video models AsymRnR targets.

Each preset is a short list of rules written in *relative* coordinates (fractions of the
attention-site depth and of the denoising trajectory), so it fits any number of sites and
steps: ``get_preset("cogvideox-2b", num_layers=30, num_steps=50)``.

How they were obtained, honestly: these are **priors**, not calibrations. They follow the
paper's three observations (perturbing Q hurts far more than perturbing K/V; shallow layers
are more sensitive than deep ones; early steps set the semantics) and the coverage of the
reference implementation's typical settings (K/V cut 0.3 in roughly 30-40 % of the
(layer, step) pairs, Q cut 0.4-0.9 in roughly 15-25 %). The reference derives its tables
from each model's similarity statistics; those models' weights are not used here, so none
of these presets was measured on the model it is named after. For a schedule fitted to
your model, run ``asymrnr calibrate`` (see :mod:`asymrnr_fx.schedules.calibrate`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .schedule import Schedule

__all__ = ["DEFAULT_STEPS", "Preset", "PRESETS", "get_preset"]

DEFAULT_STEPS = 50
"""Step count a preset is built for when the caller does not know it (any count maps)."""


@dataclass(frozen=True)
class Preset:
    """One preset: relative rules plus the reference's matching settings for the model."""

    name: str
    description: str
    rules: tuple[Mapping[str, Any], ...]
    stride: tuple[int, int, int]
    cache_interval: int
    default_steps: int


def _preset(name: str, description: str, rules: list[dict[str, Any]], *,
            stride: tuple[int, int, int], cache_interval: int, default_steps: int) -> Preset:
    return Preset(name, description, tuple(MappingProxyType(r) for r in rules), stride,
                  cache_interval, default_steps)


_ALL = [
    _preset(
        "cogvideox-2b",
        "CogVideoX-2B (30 sites, 50 steps). Prior: K/V 0.3 in the deeper 70 % of sites over "
        "the second half of the steps (35 % of cells); Q 0.4 in the deeper half over the last "
        "40 % of steps (20 %), raised to 0.8 in the deepest quarter over the last 20 %.",
        [
            {"layers": [0.3, 1.0], "steps": [0.5, 1.0], "kv": 0.3},
            {"layers": [0.5, 1.0], "steps": [0.6, 1.0], "q": 0.4},
            {"layers": [0.75, 1.0], "steps": [0.8, 1.0], "q": 0.8},
        ],
        stride=(2, 2, 2), cache_interval=5, default_steps=50,
    ),
    _preset(
        "cogvideox-5b",
        "CogVideoX-5B (42 sites, 50 steps). Prior: K/V 0.3 in the deeper 75 % of sites over "
        "the second half (37.5 % of cells); Q 0.4 in the deeper half over the last 40 % of "
        "steps (20 %), 0.6 in the deepest quarter over the last 20 %.",
        [
            {"layers": [0.25, 1.0], "steps": [0.5, 1.0], "kv": 0.3},
            {"layers": [0.5, 1.0], "steps": [0.6, 1.0], "q": 0.4},
            {"layers": [0.75, 1.0], "steps": [0.8, 1.0], "q": 0.6},
        ],
        stride=(2, 2, 2), cache_interval=5, default_steps=50,
    ),
    _preset(
        "hunyuanvideo",
        "HunyuanVideo (20 dual-stream + 40 single-stream sites, 50 steps). Prior: K/V 0.3 in "
        "the deeper 65 % of sites after the first 45 % of steps (~36 % of cells); Q 0.5 in "
        "the deeper 40 % over the last 45 % (18 %), 0.9 in the deepest fifth over the last "
        "fifth.",
        [
            {"layers": [0.35, 1.0], "steps": [0.45, 1.0], "kv": 0.3},
            {"layers": [0.6, 1.0], "steps": [0.55, 1.0], "q": 0.5},
            {"layers": [0.8, 1.0], "steps": [0.8, 1.0], "q": 0.9},
        ],
        stride=(6, 2, 2), cache_interval=3, default_steps=50,
    ),
    _preset(
        "wan2.1",
        "Wan2.1 (30 sites for 1.3B, 40 for 14B; 50 steps). No reference table exists for "
        "this model, so the prior is the most conservative: K/V 0.3 in the deeper 60 % of "
        "sites over the second half (30 % of cells); Q 0.4 in the deeper 40 % over the last "
        "40 % of steps (16 %).",
        [
            {"layers": [0.4, 1.0], "steps": [0.5, 1.0], "kv": 0.3},
            {"layers": [0.6, 1.0], "steps": [0.6, 1.0], "q": 0.4},
        ],
        stride=(2, 2, 2), cache_interval=5, default_steps=50,
    ),
    _preset(
        "mochi",
        "Mochi 1 (48 sites, 64 steps). Prior: K/V 0.3 in the deeper 70 % of sites over the "
        "second half (35 % of cells); Q 0.5 in the deeper 45 % over the last 45 % of steps "
        "(~20 %), 0.8 in the deepest fifth over the last fifth.",
        [
            {"layers": [0.3, 1.0], "steps": [0.5, 1.0], "kv": 0.3},
            {"layers": [0.55, 1.0], "steps": [0.55, 1.0], "q": 0.5},
            {"layers": [0.8, 1.0], "steps": [0.8, 1.0], "q": 0.8},
        ],
        stride=(6, 2, 2), cache_interval=3, default_steps=64,
    ),
    _preset(
        "ltx-video",
        "LTX-Video (28 sites, 50 steps). Its VAE already compresses 32x32x8, so fewer tokens "
        "are redundant; no reference table exists. Prior: K/V 0.3 in the deeper 60 % of sites "
        "over the second half (30 % of cells); Q 0.4 in the deeper 40 % over the last 40 % "
        "(16 %).",
        [
            {"layers": [0.4, 1.0], "steps": [0.5, 1.0], "kv": 0.3},
            {"layers": [0.6, 1.0], "steps": [0.6, 1.0], "q": 0.4},
        ],
        stride=(2, 2, 2), cache_interval=5, default_steps=50,
    ),
]

PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in _ALL})
"""Preset name -> :class:`Preset` (``PRESETS[name].description`` says how it was made)."""


def get_preset(name: str, num_layers: int, num_steps: int | None = None) -> Schedule:
    """The preset ``name`` laid out on ``num_layers`` sites and ``num_steps`` steps.

    ``num_steps`` defaults to the model's usual count; a generation with another count
    still maps by relative position (see :meth:`Schedule.ratios_at`).
    Unknown names raise ``ValueError`` listing the presets.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    p = PRESETS[name]
    steps = p.default_steps if num_steps is None else num_steps
    meta = {
        "preset": p.name,
        "source": "prior (paper observations and reference coverage; not calibrated)",
        "stride": list(p.stride),
        "cache_interval": p.cache_interval,
    }
    return Schedule.from_ranges(num_layers, steps, p.rules, name=p.name, meta=meta)
