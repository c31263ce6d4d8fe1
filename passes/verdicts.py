"""What the pass decided about an attention site, as a typed value.

Code decides on :class:`SiteKind`; the message beside it (``AttentionSite.reason``,
``Refusal.message``) is for people and is never parsed.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

__all__ = ["SiteKind", "Refusal", "NOT_VIDEO"]


class SiteKind(enum.Enum):
    """Why a site is rewritten, or left alone."""

    VIDEO_SELF_ATTENTION = "video self-attention"  # rewritten
    CROSS_ATTENTION = "cross-attention"
    CAUSAL = "causal attention"
    GROUPED_QUERY = "grouped-query attention"
    DROPOUT = "attention dropout"
    SHORTER_THAN_GRID = "shorter than the video grid"  # text, audio, per-frame or temporal attention
    NO_GRID_EVIDENCE = "no grid evidence"
    LAYOUT_UNKNOWN = "where the video sits is unknown"
    SEVERAL_GRIDS = "several grids fit"
    PER_QUERY_MASK = "per-query mask"
    CONTEXT_PARALLEL = "context parallelism"
    OTHER_KERNEL = "attention kernel that is not SDPA"
    DYNAMIC_SHAPES = "dynamic shapes"
    UNSUPPORTED = "unsupported call"
    NOT_UNDERSTOOD = "not understood"


# Sites that are not video self-attention at all: leaving them alone is by design, not
# something the user can fix.
NOT_VIDEO = frozenset({SiteKind.CROSS_ATTENTION, SiteKind.CAUSAL, SiteKind.GROUPED_QUERY, SiteKind.DROPOUT,
                       SiteKind.SHORTER_THAN_GRID})


class Refusal(NamedTuple):
    """Why a layout (or a site) could not be proven: the kind, and the message for people."""

    kind: SiteKind
    message: str
