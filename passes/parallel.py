"""Context parallelism as a graph shows it: which attention calls see the whole sequence.

Under diffusers' context parallelism each process holds a contiguous share of the token
sequence. Two schemes reach attention:

* **Ulysses** (``ulysses_degree``): query, key and value of shape (B, S/W, H, D) are exchanged
  by one ``all_to_all_single`` with equal splits into (B, S, H/W, D): every process attends over
  the *whole* sequence, for H/W of the heads. The gathered sequence is the W rank-local
  sequences one after another (rank order), so text and video keep their order within each
  kind but may interleave (``[text_0, video_0, text_1, video_1]`` for joint attention).
  :class:`Exchange` is the proof, with the rank-local tensors the layout is read from.
* **Ring** (``ring_degree``): key and value stay sharded and arrive through an all-gather; an
  attention call never sees the whole sequence. :func:`ring_attention` finds it.

Pure graph code: shapes come from ``example_value`` metadata, nothing runs.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.fx as fx

__all__ = ["Exchange", "ulysses_exchange", "ring_attention", "attention_calls"]

_ALL_TO_ALL = "_c10d_functional::all_to_all_single"
_WAIT = "_c10d_functional::wait_tensor"
# Value-preserving layout changes: the tensor's elements, moved or re-typed.
_RESHAPE_METHODS = {"permute", "reshape", "view", "flatten", "unflatten", "contiguous", "transpose",
                    "reshape_as", "view_as", "type_as", "to", "float", "unsqueeze", "squeeze"}
_RESHAPE_FUNCTIONS = {torch.permute, torch.reshape, torch.flatten, torch.transpose, torch.unsqueeze,
                      torch.squeeze}
# Selections: part of a tensor (ring attention slices its gathered K/V buffer).
_SELECT_METHODS = {"chunk", "split", "narrow", "select", "__getitem__", "tensor_split"}
_SELECT_FUNCTIONS = {operator.getitem, torch.chunk, torch.split, torch.narrow, torch.select,
                     torch.tensor_split}


@dataclass(frozen=True)
class Exchange:
    """A Ulysses exchange in front of one attention call.

    ``query``, ``key`` and ``value`` are the rank-local tensors (B, S/degree, H*degree, D)
    that were exchanged: the sequence the call sees is ``degree`` of them, one after another.
    """

    degree: int
    query: fx.Node
    key: fx.Node
    value: fx.Node


def _op_name(node: fx.Node) -> str | None:
    if node.op != "call_function":
        return None
    target = node.target
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target._qualified_op_name
    if isinstance(target, torch._ops.OpOverload):
        return target.name()
    return getattr(target, "__name__", None)


def _is_collective(node: fx.Node) -> bool:
    name = _op_name(node) or ""
    return name.startswith("_c10d_functional::") and name != _WAIT


def _moves(node: fx.Node, selections: bool) -> bool:
    """Whether ``node`` only reshapes its first input (or, with ``selections``, takes part of it)."""
    if _op_name(node) == _WAIT:
        return True
    methods = _RESHAPE_METHODS | (_SELECT_METHODS if selections else set())
    functions = _RESHAPE_FUNCTIONS | (_SELECT_FUNCTIONS if selections else set())
    if node.op == "call_method":
        return node.target in methods
    return node.op == "call_function" and node.target in functions


def _source(node: object, selections: bool) -> tuple[fx.Node | None, bool]:
    """Walk back from ``node`` while it only moves its input: the first node that does more
    (a collective, a computation, a graph input), and whether a selection was crossed."""
    selected = False
    while isinstance(node, fx.Node) and node.args and _moves(node, selections):
        selected = selected or not _moves(node, False)
        node = node.args[0]
    return (node if isinstance(node, fx.Node) else None), selected


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    value = node.meta.get("example_value", node.meta.get("val"))
    if isinstance(value, torch.Tensor) and all(isinstance(d, int) for d in value.shape):
        return tuple(value.shape)
    return None


def _equal_splits(node: fx.Node) -> int | None:
    """The group size of an all-to-all with equal splits (diffusers' Ulysses), else None."""
    splits = [a for a in node.args[1:3] if a is not None]
    if not splits or any(not isinstance(s, (list, tuple)) for s in splits):
        return None
    sizes = {int(x) for s in splits for x in s}
    counts = {len(s) for s in splits}
    return counts.pop() if len(sizes) == 1 and len(counts) == 1 else None


def _local_tensor(exchanged: fx.Node, want: tuple[int, int, int, int]) -> fx.Node | None:
    """The (B, S/W, H*W, D) tensor an all-to-all's input was reshaped from."""
    node = exchanged
    while isinstance(node, fx.Node):
        if _shape(node) == want:
            return node
        if not node.args or not _moves(node, False):
            return None
        node = node.args[0]
    return None


def _exchanged_input(arg: object, shape: tuple[int, ...]) -> tuple[int, fx.Node] | str | None:
    """How one attention input (B, H, S, D) reached the call: ``None`` (no collective),
    ``(degree, local tensor)`` through a Ulysses all-to-all, or the reason it is neither."""
    source, selected = _source(arg, selections=True)
    if source is None or not _is_collective(source):
        return None
    if _op_name(source) != _ALL_TO_ALL:
        name = (_op_name(source) or "").split("::")[-1]
        return f"its inputs arrive through {name} (ring attention: each process sees a shard)"
    degree = _equal_splits(source)
    if degree is None:
        return "uneven Ulysses all-to-all (ulysses_anything): the layout of the gathered sequence is unknown"
    batch, heads, seq, dim = shape
    if selected or seq % degree:
        return "attention sees part of a Ulysses exchange, not the whole sequence"
    local = _local_tensor(source.args[0], (batch, seq // degree, heads * degree, dim))
    if local is None:
        return "cannot follow the Ulysses exchange back to the rank-local tokens"
    return degree, local


def ulysses_exchange(args: dict[str, object], shapes: list[tuple[int, ...]]) -> Exchange | str | None:
    """The Ulysses exchange in front of an attention call (``args`` by name, ``shapes`` of
    query, key and value): ``None`` when no collective feeds it, a reason when one does but
    the call is not proven to see the whole sequence."""
    found = [_exchanged_input(args[k], s) for k, s in zip(("query", "key", "value"), shapes, strict=True)]
    reasons = [f for f in found if isinstance(f, str)]
    if reasons:
        return reasons[0]
    if all(f is None for f in found):
        return None
    if any(f is None for f in found) or len({f[0] for f in found}) != 1:
        return "only some of query/key/value are exchanged across processes"
    return Exchange(found[0][0], found[0][1], found[1][1], found[2][1])


def attention_calls(graph: fx.Graph) -> Iterator[tuple[fx.Node, list[object]]]:
    """Every attention-like call (by its target's name) with its key and value arguments."""
    for node in graph.nodes:
        name = (_op_name(node) or "").lower()
        if "attention" not in name and "attn" not in name:
            continue
        key = node.kwargs.get("key", node.kwargs.get("k", node.args[1] if len(node.args) > 1 else None))
        value = node.kwargs.get("value", node.kwargs.get("v", node.args[2] if len(node.args) > 2 else None))
        yield node, [key, value]


def ring_attention(graph: fx.Graph) -> str | None:
    """A description of the first attention call whose key or value arrives through a
    collective other than a Ulysses all-to-all (ring attention), or None."""
    for node, inputs in attention_calls(graph):
        for arg in inputs:
            source, _ = _source(arg, selections=True)
            if source is not None and _is_collective(source) and _op_name(source) != _ALL_TO_ALL:
                return f"{node.name}: its key/value arrive through {_op_name(source)}"
    return None
