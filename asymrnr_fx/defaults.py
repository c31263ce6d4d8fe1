"""The matching defaults, in one place.

What runs when neither the config, nor a schedule, nor the model's family says otherwise: the
reference implementation's CogVideoX values, the paper's most used setting. Every other module
reads them from here.
"""

from __future__ import annotations

__all__ = ["DEFAULT_STRIDE", "DEFAULT_CACHE_INTERVAL", "DEFAULT_METRIC", "DEFAULT_SEED"]

DEFAULT_STRIDE: tuple[int, int, int] = (2, 2, 2)  # partition chunk (t, h, w): one dst per chunk
DEFAULT_CACHE_INTERVAL = 5  # re-match every this many steps, aligned to step 0
DEFAULT_METRIC = "l2"  # squared L2 distance
DEFAULT_SEED = 0  # seed of the dst draws
