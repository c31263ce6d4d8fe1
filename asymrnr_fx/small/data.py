"""Procedural video dataset: textured shapes moving over a panning, textured background.

Every clip is a pure function of its seed (and of the optional condition), so training
data, test clips and benchmark prompts are reproducible without storing any data.

A clip is ``(F, C, H, W)`` float32 in ``[-1, 1]`` (the layout CogVideoX takes for
``hidden_states``). Its condition is five class tokens (shape, colour, motion,
background, camera pan); :func:`encode_condition` turns them into the
``encoder_hidden_states`` the model reads: one one-hot row per token over a shared
vocabulary, so the "text encoder" needs no weights and no randomness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "SHAPES",
    "COLOURS",
    "MOTIONS",
    "BACKGROUNDS",
    "PANS",
    "VOCAB",
    "TEXT_TOKENS",
    "TEXT_DIM",
    "Condition",
    "random_condition",
    "parse_prompt",
    "render_clip",
    "make_clip",
    "make_batch",
    "encode_condition",
]

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
MOTIONS = ("right", "left", "up", "down", "orbit", "zoom")
BACKGROUNDS = ("stripes", "checker", "gradient")
PANS = ("still", "pan-left", "pan-right")

_SLOTS = (SHAPES, COLOURS, MOTIONS, BACKGROUNDS, PANS)
VOCAB: tuple[str, ...] = tuple(word for slot in _SLOTS for word in slot)
TEXT_TOKENS = len(_SLOTS)
TEXT_DIM = 32  # one-hot width; >= len(VOCAB), a round number for the model's text projection
assert len(VOCAB) <= TEXT_DIM

_RGB = {
    "red": (0.95, 0.2, 0.15),
    "green": (0.2, 0.85, 0.25),
    "blue": (0.2, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.15),
}
# Muted backgrounds so that the saturated shape always stands out.
_BG_RGB = {
    "stripes": ((0.30, 0.30, 0.38), (0.45, 0.45, 0.52)),
    "checker": ((0.35, 0.28, 0.25), (0.50, 0.42, 0.38)),
    "gradient": ((0.15, 0.25, 0.30), (0.50, 0.55, 0.55)),
}


@dataclass(frozen=True)
class Condition:
    """The class tokens of one clip."""

    shape: str
    colour: str
    motion: str
    background: str
    pan: str

    def __post_init__(self) -> None:
        for value, slot in zip(self.tokens, _SLOTS, strict=True):
            if value not in slot:
                raise ValueError(f"{value!r} is not one of {slot}")

    @property
    def tokens(self) -> tuple[str, str, str, str, str]:
        return (self.shape, self.colour, self.motion, self.background, self.pan)

    @property
    def prompt(self) -> str:
        """A readable prompt that :func:`parse_prompt` maps back to this condition."""
        return " ".join(self.tokens)


def random_condition(generator: torch.Generator) -> Condition:
    """Draw every token uniformly."""
    picks = [slot[int(torch.randint(len(slot), (1,), generator=generator))] for slot in _SLOTS]
    return Condition(*picks)


def parse_prompt(prompt: str) -> Condition:
    """Read a prompt such as ``"red circle moving right on stripes"``.

    Any word of the vocabulary fills its slot; missing slots take the first value of
    the slot (``stripes`` background, ``still`` camera). A prompt without a shape,
    colour or motion is an error, because those are what the clip is about.
    """
    words = prompt.lower().replace(",", " ").split()
    found: list[str | None] = [None] * len(_SLOTS)
    for word in words:
        for i, slot in enumerate(_SLOTS):
            if word in slot:
                found[i] = word
    missing = [name for name, got in zip(("shape", "colour", "motion"), found[:3], strict=True) if got is None]
    if missing:
        raise ValueError(
            f"prompt {prompt!r} names no {', '.join(missing)}; "
            f"shapes {SHAPES}, colours {COLOURS}, motions {MOTIONS}"
        )
    return Condition(*(got if got is not None else slot[0] for got, slot in zip(found, _SLOTS, strict=True)))


def _background(kind: str, height: int, width: int, offset_x: float, phase: float) -> torch.Tensor:
    """A (3, H, W) texture in [0, 1] shifted by ``offset_x`` pixels (the camera pan)."""
    ys = torch.arange(height, dtype=torch.float32).view(-1, 1).expand(height, width)
    xs = torch.arange(width, dtype=torch.float32).view(1, -1).expand(height, width) + offset_x
    if kind == "stripes":  # diagonal stripes, period 8 px
        mix = 0.5 + 0.5 * torch.sin(2 * math.pi * (xs + ys) / 8.0 + phase)
    elif kind == "checker":  # soft checkerboard, 8 px cells
        mix = 0.5 + 0.5 * torch.sin(math.pi * xs / 4.0 + phase) * torch.sin(math.pi * ys / 4.0)
    else:  # vertical gradient with a gentle horizontal ripple
        mix = ys / max(height - 1, 1) + 0.1 * torch.sin(2 * math.pi * xs / 16.0 + phase)
        mix = mix.clamp(0, 1)
    lo, hi = (torch.tensor(c).view(3, 1, 1) for c in _BG_RGB[kind])
    return lo + (hi - lo) * mix


def _shape_mask(shape: str, cx: float, cy: float, radius: float, height: int, width: int) -> torch.Tensor:
    """Soft (anti-aliased) coverage in [0, 1] of a shape centred at (cx, cy)."""
    ys = torch.arange(height, dtype=torch.float32).view(-1, 1) + 0.5
    xs = torch.arange(width, dtype=torch.float32).view(1, -1) + 0.5
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        dist = torch.sqrt(dx * dx + dy * dy) - radius
    elif shape == "square":
        dist = torch.maximum(dx.abs(), dy.abs()) - radius * 0.85
    else:  # upward triangle: intersection of three half-planes (signed distances)
        r = radius * 1.1
        k = math.sqrt(3.0)
        edges = [
            (dy - r * 0.5),  # bottom edge
            (-k * dx - dy - r) / 2.0,  # left edge
            (k * dx - dy - r) / 2.0,  # right edge
        ]
        dist = torch.maximum(torch.maximum(edges[0], edges[1]), edges[2])
    return (0.5 - dist).clamp(0.0, 1.0)


def render_clip(
    cond: Condition,
    *,
    frames: int = 8,
    size: int = 32,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Render one clip of ``cond``; the generator draws start position, size and texture phase.

    Returns ``(frames, 3, size, size)`` float32 in [-1, 1].
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g))

    scale = size / 32.0
    radius = uniform(4.5, 6.0) * scale
    phase = uniform(0.0, 2 * math.pi)
    pan_speed = {"still": 0.0, "pan-left": -1.5, "pan-right": 1.5}[cond.pan] * scale
    # Travel of the shape over the clip, in pixels; start points keep it mostly in view.
    travel = 2.0 * scale * (frames - 1)
    margin = radius + 1.0
    centre = size / 2.0
    cx0, cy0 = uniform(margin, size - margin), uniform(margin, size - margin)
    if cond.motion == "right":
        cx0 = uniform(margin, max(margin, size - margin - travel))
    elif cond.motion == "left":
        cx0 = uniform(min(size - margin, margin + travel), size - margin)
    elif cond.motion == "down":
        cy0 = uniform(margin, max(margin, size - margin - travel))
    elif cond.motion == "up":
        cy0 = uniform(min(size - margin, margin + travel), size - margin)
    orbit_r = uniform(6.0, 8.0) * scale
    orbit_a0 = uniform(0.0, 2 * math.pi)

    colour = torch.tensor(_RGB[cond.colour]).view(3, 1, 1)
    out = torch.empty(frames, 3, size, size)
    for f in range(frames):
        s = f / max(frames - 1, 1)
        cx, cy, r = cx0, cy0, radius
        if cond.motion == "right":
            cx = cx0 + travel * s
        elif cond.motion == "left":
            cx = cx0 - travel * s
        elif cond.motion == "down":
            cy = cy0 + travel * s
        elif cond.motion == "up":
            cy = cy0 - travel * s
        elif cond.motion == "orbit":
            angle = orbit_a0 + 2 * math.pi * 0.75 * s
            cx, cy = centre + orbit_r * math.cos(angle), centre + orbit_r * math.sin(angle)
        else:  # zoom: grows from small to large around a fixed centre
            cx, cy = centre + (cx0 - centre) * 0.3, centre + (cy0 - centre) * 0.3
            r = radius * (0.5 + 1.1 * s)
        bg = _background(cond.background, size, size, pan_speed * f, phase)
        mask = _shape_mask(cond.shape, cx, cy, r, size, size)
        # Texture on the shape: a darker core ring, so the shape is not a flat blob.
        inner = _shape_mask(cond.shape, cx, cy, r * 0.45, size, size)
        fg = colour * (1.0 - 0.35 * inner)
        out[f] = bg * (1 - mask) + fg * mask
    return out * 2.0 - 1.0


def make_clip(seed: int, *, frames: int = 8, size: int = 32, cond: Condition | None = None) -> tuple[torch.Tensor, Condition]:
    """Clip number ``seed``: its condition (drawn from the seed unless given) and pixels."""
    g = torch.Generator().manual_seed(int(seed))
    cond = cond if cond is not None else random_condition(g)
    return render_clip(cond, frames=frames, size=size, generator=g), cond


def make_batch(seeds: Sequence[int], *, frames: int = 8, size: int = 32) -> tuple[torch.Tensor, list[Condition]]:
    """Clips ``seeds`` stacked: ``(B, F, 3, size, size)`` and their conditions."""
    clips, conds = zip(*(make_clip(s, frames=frames, size=size) for s in seeds), strict=True)
    return torch.stack(clips), list(conds)


def encode_condition(conds: Sequence[Condition | None]) -> torch.Tensor:
    """``encoder_hidden_states`` ``(B, TEXT_TOKENS, TEXT_DIM)``: one one-hot row per token.

    ``None`` is the unconditional (null) condition: all-zero rows, used for condition
    dropout in training and for classifier-free guidance in sampling.
    """
    out = torch.zeros(len(conds), TEXT_TOKENS, TEXT_DIM)
    for b, cond in enumerate(conds):
        if cond is None:
            continue
        for t, word in enumerate(cond.tokens):
            out[b, t, VOCAB.index(word)] = 1.0
    return out
