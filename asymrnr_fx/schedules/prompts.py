"""The default calibration prompts for text-to-video models (``asymrnr calibrate`` without
``--prompt``).

Calibration averages the damage of each cut over every clip it samples, so its prompts should
span what the model will be asked for: people and animals, close-ups and landscapes, slow
and fast motion, camera moves, light and dark scenes. Eight prompts, one seed each by default
(``--seeds`` samples more per prompt); pass your own with ``--prompt`` (repeatable) when the
model serves a narrower domain.
"""

from __future__ import annotations

__all__ = ["CALIBRATION_PROMPTS"]

CALIBRATION_PROMPTS: tuple[str, ...] = (
    "A golden retriever runs across a sunlit meadow, slow motion, shallow depth of field.",
    "A close-up of an elderly man's face as he smiles, soft window light.",
    "Aerial drone shot gliding over a rocky coastline with waves crashing, sunset.",
    "A busy city street at night in the rain, neon signs reflecting on wet asphalt.",
    "A chef chops vegetables quickly on a wooden board, top-down view.",
    "Timelapse of clouds rolling over snow-capped mountains.",
    "A red sports car drifts around a corner on a desert road, dust flying, tracking shot.",
    "An astronaut floats inside a space station, slowly turning, Earth visible through the window.",
)
