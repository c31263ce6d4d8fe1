"""Built-in schedules: the AsymRnR authors' calibrated tables, and our priors elsewhere.

Two kinds, named by model (``asymrnr show NAME`` and :meth:`Schedule.preset` say which):

* **authors** (``cogvideox-2b``, ``cogvideox-5b``, ``hunyuanvideo``, ``mochi``,
  ``fastvideo-hunyuan``, and each ``-fast``): the tables the paper's authors calibrated and
  published for that model (github.com/wenhao728/AsymRnR, MIT), cell for cell at their native
  (block, step) size, with their stride, cache interval and metric: see
  :mod:`asymrnr_fx.schedules.authors`. The plain name is their "base" rule set, ``-fast`` their
  "fast" one.
* **prior** (``wan2.1``, ``ltx-video``): models the authors did not calibrate. Rules written
  here in relative depth and trajectory position from the paper's observations (Q hurts more
  than K/V, shallow layers and early steps are more sensitive), never measured on the model
  they are named after. For a schedule fitted to your model, run ``asymrnr calibrate``.

Any preset fits another site or step count: an authors' table maps by relative position
(:meth:`Schedule.mapped`), a prior's relative rules are laid out at that size:
``get_preset("cogvideox-2b", num_layers=4, num_steps=20)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType
from typing import Any

from . import authors
from .schedule import Schedule

__all__ = ["AUTHORS_FAMILIES", "DEFAULT_STEPS", "Preset", "PRESETS", "default_preset", "get_preset"]

DEFAULT_STEPS = 50
"""Step count a prior is written for (any count maps)."""


@dataclass(frozen=True)
class Preset:
    """One preset: where it comes from, its native size and its matching settings."""

    name: str
    kind: str  # "authors" (their calibrated table) or "prior" (written here, not measured)
    description: str
    stride: tuple[int, int, int]
    cache_interval: int
    metric: str
    num_layers: int  # native site count
    num_steps: int  # native step count
    rules: tuple[Mapping[str, Any], ...] = field(default=(), repr=False)  # priors: relative rules
    model: str | None = None  # authors: the model of their table
    variant: str | None = None  # authors: "base" or "fast"

    @property
    def source(self) -> str:
        """Where the ratios come from, in one line."""
        if self.kind == "prior":
            return "prior written here (paper observations; not calibrated on this model)"
        return authors_source(self.model, self.variant)

    def native(self) -> Schedule:
        """The preset at its native size, its settings and source in ``meta``."""
        return _native(self.name)


def authors_source(model: str | None, variant: str | None) -> str:
    data = authors.authors_data()
    return f"authors' {variant} table for {model} ({data['source']} @ {data['commit'][:12]}, MIT)"


def _authors_presets() -> list[Preset]:
    models = authors.authors_data()["models"]
    out = []
    for model in authors.AUTHORS_MODELS:
        entry = models[model]
        for variant in authors.VARIANTS:
            rules_note = (f" (the authors ship no rules for it: {authors.RULES_FROM[model]}'s)"
                          if model in authors.RULES_FROM else "")
            out.append(Preset(
                name=model if variant == "base" else f"{model}-fast", kind="authors",
                description=(f"the AsymRnR authors' calibrated {model} table, {variant} rules{rules_note}: "
                             f"{entry['blocks']} blocks x {entry['steps']} steps, stride "
                             f"{tuple(entry['stride'])}, matching every {entry['cache_interval']} step(s)"),
                stride=tuple(entry["stride"]), cache_interval=entry["cache_interval"], metric=entry["metric"],
                num_layers=entry["blocks"], num_steps=entry["steps"], model=model, variant=variant))
    return out


def _prior(name: str, description: str, rules: list[dict[str, Any]], *, num_layers: int) -> Preset:
    return Preset(name, "prior", description, (2, 2, 2), 5, "l2", num_layers, DEFAULT_STEPS,
                  tuple(MappingProxyType(r) for r in rules))


_PRIORS = [
    _prior(
        "wan2.1",
        "our prior for Wan2.1 (30 sites for 1.3B, 40 for 14B; 50 steps), not calibrated: the "
        "authors published no table for it. K/V 0.3 in the deeper 60 % of sites over the "
        "second half (30 % of cells); Q 0.4 in the deeper 40 % over the last 40 % of steps (16 %).",
        [
            {"layers": [0.4, 1.0], "steps": [0.5, 1.0], "kv": 0.3},
            {"layers": [0.6, 1.0], "steps": [0.6, 1.0], "q": 0.4},
        ],
        num_layers=30,
    ),
    _prior(
        "ltx-video",
        "our prior for LTX-Video (28 sites, 50 steps), not calibrated: the authors published "
        "no table for it, and its VAE already compresses 32x32x8, so fewer tokens are redundant. "
        "K/V 0.3 in the deeper 60 % of sites over the second half (30 % of cells); Q 0.4 in the "
        "deeper 40 % over the last 40 % (16 %).",
        [
            {"layers": [0.4, 1.0], "steps": [0.5, 1.0], "kv": 0.3},
            {"layers": [0.6, 1.0], "steps": [0.6, 1.0], "q": 0.4},
        ],
        num_layers=28,
    ),
]

_ALL = _authors_presets() + _PRIORS

PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in _ALL})
"""Preset name -> :class:`Preset` (``PRESETS[name].description`` says how it was made)."""


def _meta(p: Preset) -> dict[str, Any]:
    return {"preset": p.name, "kind": p.kind, "source": p.source, "stride": list(p.stride),
            "cache_interval": p.cache_interval, "metric": p.metric}


@cache
def _native(name: str) -> Schedule:
    p = PRESETS[name]
    if p.kind == "authors":
        table = authors.authors_schedule(p.model, p.variant)
        return Schedule(table.num_layers, table.num_steps, table.q, table.kv, name=p.name,
                        meta={**table.meta, **_meta(p)})
    return Schedule.from_ranges(p.num_layers, p.num_steps, p.rules, name=p.name, meta=_meta(p))


def get_preset(name: str, num_layers: int | None = None, num_steps: int | None = None) -> Schedule:
    """The preset ``name`` at its native size, or on ``num_layers`` sites and ``num_steps``
    steps: an authors' table mapped by relative position (:meth:`Schedule.mapped`), a prior's
    relative rules laid out at that size.

    A generation with another step count still maps at run time (see
    :meth:`Schedule.ratios_at`). Unknown names raise ``ValueError`` listing the presets.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    p = PRESETS[name]
    if p.kind == "prior":  # relative rules: laid out exactly at any size
        return Schedule.from_ranges(num_layers or p.num_layers, num_steps or p.num_steps, p.rules,
                                    name=p.name, meta=_meta(p))
    return _native(name).mapped(num_layers, num_steps)


# Transformer and block classes of the models the authors calibrated: apply(pipe) and the bare
# backend use their base table there when the user sets no ratios (the bare backend sees only
# the blocks in its graphs).
AUTHORS_FAMILIES: Mapping[str, str] = MappingProxyType({
    "CogVideoXTransformer3DModel": "cogvideox", "CogVideoXBlock": "cogvideox",
    "HunyuanVideoTransformer3DModel": "hunyuanvideo", "HunyuanVideoFramepackTransformer3DModel": "hunyuanvideo",
    "HunyuanVideoTransformerBlock": "hunyuanvideo", "HunyuanVideoSingleTransformerBlock": "hunyuanvideo",
    "MochiTransformer3DModel": "mochi", "MochiTransformerBlock": "mochi",
})


def default_preset(class_names: Iterable[str], num_blocks: int | None = None) -> str | None:
    """The authors' base table for a model of these classes (its transformer's, or its blocks'),
    or None where the authors calibrated none. CogVideoX has two: 42 blocks read the 5B table,
    any other count the 2B one."""
    family = next((AUTHORS_FAMILIES[n] for n in sorted(class_names) if n in AUTHORS_FAMILIES), None)
    if family == "cogvideox":
        return "cogvideox-5b" if num_blocks == 42 else "cogvideox-2b"
    return family
