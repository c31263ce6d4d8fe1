"""Tiny random-weight configs of the real diffusers video transformers.

Used by the tests and the CPU benchmarks: each entry builds the real diffusers class at a
size that compiles in seconds, plus matching example inputs.
"""

from __future__ import annotations

from collections.abc import Callable

from .tiny.base import TinyModel

__all__ = ["TinyModel", "TINY_MODELS", "build_tiny"]


TINY_MODELS: dict[str, Callable[[int, int], TinyModel]] = {}
"""Every tiny config by name, joined from the family modules of :mod:`asymrnr_fx.tiny`."""


def _families() -> None:
    from .tiny import classic, cogvideox, hunyuan, kandinsky, ltx, others, wan, wan_derived

    for module in (cogvideox, wan, wan_derived, hunyuan, ltx, classic, kandinsky, others):
        TINY_MODELS.update(module.CONFIGS)


_families()


def build_tiny(name: str, batch: int = 1, seed: int = 0) -> TinyModel:
    """Build the tiny config of model ``name`` (one of ``TINY_MODELS``)."""
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {name!r}; choose one of {sorted(TINY_MODELS)}")
    return TINY_MODELS[name](batch, seed)
