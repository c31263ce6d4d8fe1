"""What a tiny config builds, and the small helpers every family module shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["TinyModel", "randn", "timesteps", "grid_of"]


@dataclass
class TinyModel:
    """A model instance, its forward kwargs and the latent grid (T, H, W) in tokens."""

    name: str
    model: torch.nn.Module
    inputs: dict[str, Any]
    grid: tuple[int, int, int]
    num_layers: int
    notes: str = ""  # how its conditioning tokens are laid out (for the support table)


def randn(*shape: int) -> torch.Tensor:
    """Standard normal values from the global generator (seeded by the config builder)."""
    return torch.randn(*shape)


def timesteps(batch: int, value: int = 500) -> torch.Tensor:
    return torch.full((batch,), value, dtype=torch.long)


def grid_of(frames: int, height: int, width: int, patch: tuple[int, int, int]) -> tuple[int, int, int]:
    """Token grid of a latent of ``frames x height x width`` under ``(t, h, w)`` patches."""
    return -(-frames // patch[0]), height // patch[1], width // patch[2]
