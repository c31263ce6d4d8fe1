"""Infer the video token grid and the text/video layout of a sequence from graph metadata.

The grid comes from the patch-embedding convolution (its output's spatial shape, times the
frame count for per-frame 2-D patching), or from evidence gathered outside the graph (another
graph's patch embedding, the model's input shape). The text segment comes from the
concatenation that joins text and video tokens before attention. Neither is guessed: without
evidence the site is left alone (a 1-D partition only on explicit opt-in).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F

from .verdicts import Refusal, SiteKind
from .walk import ancestors

__all__ = ["SequenceLayout", "infer_grid", "infer_layout", "layout_from_evidence"]

_CONV3D = {F.conv3d, torch.conv3d, torch.ops.aten.convolution.default}
_CONV2D = {F.conv2d, torch.conv2d}
_CAT = {torch.cat, torch.concat, torch.concatenate}


@dataclass(frozen=True)
class SequenceLayout:
    """Where the video tokens sit in an attention sequence, and their grid.

    ``video_start`` is the position of the video in the *canonical* (single-process) order:
    text, if any, before or after one contiguous video segment. Under Ulysses context
    parallelism (``shards`` > 1) the sequence the call sees is ``shards`` rank-local sequences
    one after another, each with its share of the text and of the video in the canonical
    order; :meth:`token_order` maps one order to the other.
    """

    video_start: int
    video_len: int
    grid: tuple[int, int, int]
    text_len: int
    grid_inferred: bool  # False: 1-D fallback partition over the video tokens
    shards: int = 1

    def partition_stride(self, stride: tuple[int, int, int]) -> tuple[int, int, int]:
        """The chunk to partition with: ``stride``, or for the 1-D fallback as many
        consecutive tokens as the 3-D chunk holds."""
        return stride if self.grid_inferred else (math.prod(stride), 1, 1)

    @property
    def text_side(self) -> str | None:
        if self.text_len == 0:
            return None
        return "before" if self.video_start > 0 else "after"

    def token_order(self) -> list[int] | None:
        """For each canonical position, its position in the sequence the call sees; None
        where the two are the same (one process, or no text: the shards concatenate to the
        canonical order)."""
        if self.shards == 1 or self.text_len == 0:
            return None
        text, video = self.text_len // self.shards, self.video_len // self.shards
        before = self.text_side == "before"
        text_at, video_at = (0, text) if before else (video, 0)
        texts = [r * (text + video) + text_at + j for r in range(self.shards) for j in range(text)]
        videos = [r * (text + video) + video_at + j for r in range(self.shards) for j in range(video)]
        return texts + videos if before else videos + texts


def _shape(node: object) -> tuple[int, ...] | None:
    if not isinstance(node, fx.Node):
        return None
    value = node.meta.get("example_value", node.meta.get("val"))
    if isinstance(value, torch.Tensor) and all(isinstance(d, int) for d in value.shape):
        return tuple(value.shape)
    return None


def _frames_of_2d_patching(graph: fx.Graph, conv_in: tuple[int, ...]) -> int | None:
    """Frame count when frames were folded into the batch for a per-frame 2-D conv."""
    folded, channels, height, width = conv_in
    for node in graph.nodes:
        shape = _shape(node) if node.op == "placeholder" else None
        if shape is None or len(shape) != 5 or shape[-2:] != (height, width):
            continue
        batch = shape[0]
        for frames, other in ((shape[1], shape[2]), (shape[2], shape[1])):
            if batch * frames == folded and other == channels:
                return frames
    return None


def infer_grid(graph: fx.Graph) -> tuple[int, int, int] | None:
    """The (T, H, W) token grid from the first patch-embedding convolution, if any."""
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        out = _shape(node)
        if node.target in _CONV3D and out is not None and len(out) == 5:
            return out[2], out[3], out[4]
        if node.target in _CONV2D and out is not None and len(out) == 4:
            conv_in = _shape(node.args[0])
            if conv_in is None or len(conv_in) != 4:
                continue
            frames = _frames_of_2d_patching(graph, conv_in)
            if frames is not None:
                return frames, out[2], out[3]
    return None


def _sequence_pieces(query: fx.Node, seq_len: int, max_depth: int = 40) -> list[int] | None:
    """Lengths of the pieces of the concatenation that built the attention sequence."""
    for node in ancestors(query, max_depth):
        if node.op != "call_function" or node.target not in _CAT:
            continue
        pieces = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        out = _shape(node)
        shapes = [_shape(p) for p in pieces] if isinstance(pieces, (list, tuple)) else [None]
        if out is not None and None not in shapes and len(shapes) > 1 and isinstance(dim, int):
            if out[dim] == seq_len:
                return [s[dim] for s in shapes]
    return None


def _video_tokens(query: fx.Node, seq_len: int, grid: tuple[int, int, int] | None,
                  text_tokens: int | None, allow_1d: bool, shards: int) -> int | Refusal:
    """Video tokens of the (rank-local) sequence, or why there is no proof it holds video."""
    if grid is not None:
        if math.prod(grid) % shards:
            return Refusal(SiteKind.CONTEXT_PARALLEL,
                           f"the {math.prod(grid)} video tokens do not split evenly over {shards} processes")
        video_len = math.prod(grid) // shards
        if seq_len < video_len:
            return Refusal(SiteKind.SHORTER_THAN_GRID, f"sequence of {seq_len * shards} tokens is shorter "
                           f"than the {video_len * shards} video tokens (not video attention)")
        return video_len
    if not allow_1d:
        return Refusal(SiteKind.NO_GRID_EVIDENCE,
                       "no evidence that this is video: no graph showed the patch embedding and no grid "
                       "was given; use asymrnr_fx.apply(pipe) (or apply(pipe, regional=True)), which reads "
                       "the grid from the transformer's input, or backend(grid=(T, H, W))")
    if text_tokens is not None:
        return seq_len - text_tokens // shards
    pieces = _sequence_pieces(query, seq_len)
    return max(pieces) if pieces and len(pieces) == 2 else seq_len


def _text_side(query: fx.Node, seq_len: int, text_len: int, video_len: int,
               text_side: str | None) -> str | Refusal:
    """Where the text sits ("before"/"after"), or the reason it cannot be told."""
    if text_side is not None:
        return text_side
    if text_len == video_len:
        return Refusal(SiteKind.LAYOUT_UNKNOWN,
                       f"text and video are both {video_len} tokens: cannot tell which is which (set text_side)")
    pieces = _sequence_pieces(query, seq_len)
    if pieces == [text_len, video_len]:
        return "before"
    if pieces == [video_len, text_len]:
        return "after"
    return Refusal(SiteKind.LAYOUT_UNKNOWN, f"cannot tell where the {text_len} text tokens are (set text_side)")


def infer_layout(
    query: fx.Node,
    seq_len: int,
    grid: tuple[int, int, int] | None,
    text_tokens: int | None = None,
    text_side: str | None = None,
    allow_1d: bool = False,
    shards: int = 1,
) -> SequenceLayout | Refusal:
    """The layout of an attention sequence of ``seq_len`` tokens, or the reason there is none.

    Without a ``grid`` there is no proof that the sequence holds video: the site is left
    alone unless ``allow_1d`` (then its video tokens are partitioned in 1-D). With ``shards``
    (Ulysses), ``query`` is the rank-local tensor: the local layout is read from it, and the
    layout returned is that of the whole, gathered sequence.
    """
    if seq_len % shards or (text_tokens is not None and text_tokens % shards):
        return Refusal(SiteKind.CONTEXT_PARALLEL, f"the sequence does not split evenly over {shards} processes")
    local_len = seq_len // shards
    video_len = _video_tokens(query, local_len, grid, text_tokens, allow_1d, shards)
    if isinstance(video_len, Refusal):
        return video_len
    text_len = local_len - video_len
    if text_tokens is not None and text_tokens != text_len * shards:
        return Refusal(SiteKind.LAYOUT_UNKNOWN, f"text_tokens={text_tokens} does not match the sequence "
                       f"({seq_len} - {video_len * shards} video tokens)")
    if video_len <= 0:
        return Refusal(SiteKind.LAYOUT_UNKNOWN, "no video tokens in the sequence")
    token_grid = grid if grid is not None else (video_len * shards, 1, 1)
    if text_len == 0:
        return SequenceLayout(0, video_len * shards, token_grid, 0, grid is not None, shards)
    side = _text_side(query, local_len, text_len, video_len, text_side)
    if isinstance(side, Refusal):
        return side
    start = text_len * shards if side == "before" else 0
    return SequenceLayout(start, video_len * shards, token_grid, text_len * shards, grid is not None, shards)


def layout_from_evidence(
    query: fx.Node,
    seq_len: int,
    grids: Sequence[tuple[int, int, int]],
    text_tokens: int | None = None,
    text_side: str | None = None,
    shards: int = 1,
) -> SequenceLayout | Refusal:
    """The layout for the one grid among ``grids`` (evidence gathered outside this graph:
    another graph's patch embedding, or the model's input) that fits the sequence."""
    fits, refusals = {}, []
    for grid in dict.fromkeys(grids):
        layout = infer_layout(query, seq_len, grid, text_tokens, text_side, shards=shards)
        if isinstance(layout, SequenceLayout):
            fits[grid] = layout
        else:
            refusals.append((grid, layout))
    if len(fits) == 1:
        return next(iter(fits.values()))
    if fits:
        return Refusal(SiteKind.SEVERAL_GRIDS,
                       f"several video grids fit this sequence ({sorted(fits)}): set grid=(T, H, W)")
    if not refusals:
        return infer_layout(query, seq_len, None, text_tokens, text_side, shards=shards)
    kinds = {refusal.kind for _, refusal in refusals}
    reasons = "; ".join(f"{grid}: {refusal.message}" for grid, refusal in refusals)
    return Refusal(kinds.pop() if len(kinds) == 1 else SiteKind.LAYOUT_UNKNOWN,
                   f"fits none of the video grids of this model ({reasons})")
