"""Prove what a per-query attention mask does to the video rows (pure graph code).

A mask with one row per query may be causal or block-causal, so in general the pass leaves
such a site alone: restoring Q copies a representative's output row, which is only right when
every video query sees the same keys. One construction is provably that: the symmetric padding
mask ``K & K^T`` built from a key mask ``K`` (HunyuanVideo 1.5 builds it from the prompt mask
padded with ``True`` over the video), whose every row for a query inside ``K``'s always-valid
prefix equals ``K`` itself. :func:`valid_prefix_of_symmetric_mask` recognises it.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

__all__ = ["valid_prefix_of_symmetric_mask"]

_AND = {operator.and_, torch.logical_and, torch.bitwise_and}
_AND_METHODS = {"__and__", "logical_and", "bitwise_and"}
_PAD = {F.pad, torch._C._nn.pad, torch.constant_pad_nd}


def _shape(node: object) -> tuple[int, ...] | None:
    value = node.meta.get("example_value", node.meta.get("val")) if isinstance(node, fx.Node) else None
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _strip(node: object) -> object:
    """Skip what keeps a boolean mask's values: ``.bool()``, ``.contiguous()``, ``.to(device)``."""
    while isinstance(node, fx.Node) and node.op == "call_method" and node.target in ("bool", "contiguous", "to"):
        if node.target == "to" and any(isinstance(a, torch.dtype) and a != torch.bool
                                       for a in (*node.args[1:], *node.kwargs.values())):
            return node
        node = node.args[0]
    return node


def _and_operands(node: object) -> tuple[object, object] | None:
    if not isinstance(node, fx.Node) or len(node.args) < 2:
        return None
    if (node.op == "call_function" and node.target in _AND) or (
            node.op == "call_method" and node.target in _AND_METHODS):
        return node.args[0], node.args[1]
    return None


def _is_transpose_of(node: object, other: object) -> bool:
    """``node`` is ``other.transpose(-2, -1)`` of a 4-D tensor."""
    if not isinstance(node, fx.Node) or node.op != "call_method" or node.target != "transpose":
        return False
    dims = {d % 4 for d in node.args[1:3] if isinstance(d, int)}
    return node.args[0] is other and dims == {2, 3}


def _key_vector(rows: object) -> fx.Node | None:
    """The (B, 1, 1, S) key mask that ``rows`` (B, 1, S, S) repeats along the query axis."""
    if not isinstance(rows, fx.Node) or rows.op != "call_method" or rows.target not in ("repeat", "expand"):
        return None
    source, shape, out = rows.args[0], _shape(rows.args[0]), _shape(rows)
    if shape is None or out is None or len(shape) != 4 or len(out) != 4:
        return None
    if shape[1:3] != (1, 1) or out[2] != out[3] or out[3] != shape[3]:
        return None
    return source


def _padded_prefix(vector: object) -> int:
    """How many leading positions of a key mask ``F.pad(x, (n, 0), value=True)`` made True."""
    node = _strip(vector)
    while isinstance(node, fx.Node) and node.op == "call_method" and node.target in ("view", "reshape",
                                                                                      "unsqueeze"):
        node = _strip(node.args[0])
    if not isinstance(node, fx.Node) or node.op != "call_function" or node.target not in _PAD:
        return 0
    pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    if mode != "constant" or value is not True or not isinstance(pad, (tuple, list)) or len(pad) != 2:
        return 0
    return int(pad[0]) if isinstance(pad[0], int) and pad[1] == 0 else 0


def valid_prefix_of_symmetric_mask(mask: object) -> int:
    """For ``mask = K & K^T`` (``K``: a (B, 1, 1, S) key mask repeated over the queries), the
    length of ``K``'s leading run that is True by construction; 0 when ``mask`` is not that.

    Every query in that prefix has the row ``K``: video tokens inside it may be reduced and
    restored exactly, whatever the mask says elsewhere.
    """
    operands = _and_operands(_strip(mask))
    if operands is None:
        return 0
    left, right = (_strip(o) for o in operands)
    for rows, other in ((left, right), (right, left)):
        if _is_transpose_of(other, rows) and (vector := _key_vector(rows)) is not None:
            return _padded_prefix(vector)
    return 0
