"""The small model's clip sets: what calibration sees, and what evaluation holds out.

Every quality figure of the small model says which set it was measured on:

* :data:`CALIBRATION` (in-sample): the demo's four prompts, two seeds each (0-7; the demo
  samples seeds 0-3). ``asymrnr calibrate --model small`` measures on it by default, and the
  demo schedule was probed on its prompts.
* :data:`HELD_OUT`: four other prompts (every shape, colour, background and pan appears,
  in other combinations), two seeds each (10-17); no calibration ever sees them.

Both are fixed so that a figure can be reproduced; evaluate a schedule calibrated on one set
on the other to see whether it holds.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClipSet", "CALIBRATION", "HELD_OUT", "CLIP_SETS"]


@dataclass(frozen=True)
class ClipSet:
    """Named (prompt, seed) pairs: one clip each."""

    name: str
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.prompts) != len(self.seeds):
            raise ValueError(f"clip set {self.name!r}: {len(self.prompts)} prompts but "
                             f"{len(self.seeds)} seeds (one seed per clip)")

    def __len__(self) -> int:
        return len(self.seeds)

    def describe(self) -> str:
        """One line: prompt (seed), ..."""
        return "; ".join(f"{p} ({s})" for p, s in zip(self.prompts, self.seeds, strict=True))


def _repeat(name: str, prompts: tuple[str, ...], first_seed: int, rounds: int) -> ClipSet:
    """Every prompt ``rounds`` times, each clip with its own seed from ``first_seed`` on."""
    return ClipSet(name, prompts * rounds, tuple(range(first_seed, first_seed + len(prompts) * rounds)))


CALIBRATION = _repeat("calibration", (
    "red circle right stripes still",
    "blue square orbit checker still",
    "yellow triangle down gradient pan-left",
    "green circle zoom stripes pan-right",
), 0, 2)

HELD_OUT = _repeat("held-out", (
    "green square left checker pan-right",
    "red triangle up stripes still",
    "blue circle down gradient still",
    "yellow square zoom checker pan-left",
), 10, 2)

CLIP_SETS = {s.name: s for s in (CALIBRATION, HELD_OUT)}
