"""Specialize a graph captured with symbolic sizes to the sizes of one call.

When a model is called at a second resolution, Dynamo recompiles with dynamic shapes (its
``automatic_dynamic_shapes``): the sizes in the graph become symbols, and the site
classification cannot prove a video grid from symbols. :func:`concrete_graph` copies the
graph and propagates the call's concrete sizes through it (fake tensors, no compute), so the
copy carries static shapes in its metadata and can be classified and rewritten as if Dynamo
had captured it at that size. The copy still reads its size inputs at run time; it is only
ever run with inputs of the sizes it was specialized to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx

__all__ = ["has_symbolic_sizes", "concrete_graph", "size_signature"]


def _value(node: fx.Node) -> object:
    return node.meta.get("example_value", node.meta.get("val"))


def has_symbolic_sizes(graph: fx.Graph) -> bool:
    """Whether an input of ``graph`` is a symbolic size or a tensor with symbolic sizes."""
    for node in graph.nodes:
        if node.op != "placeholder":
            continue
        value = _value(node)
        if isinstance(value, torch.SymInt | torch.SymFloat):
            return True
        if isinstance(value, torch.Tensor) and not all(isinstance(d, int) for d in value.shape):
            return True
    return False


def size_signature(args: Sequence[Any]) -> tuple[Any, ...]:
    """What a specialized copy is valid for: every tensor's shape, every other input's value."""
    return tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else a for a in args)


class _Propagate(fx.Interpreter):
    def run_node(self, node: fx.Node) -> Any:
        result = super().run_node(node)
        if node.op != "output":
            node.meta["example_value"] = result
            node.meta.pop("val", None)
        return result


def concrete_graph(gm: fx.GraphModule, args: Sequence[Any]) -> fx.GraphModule:
    """A copy of ``gm`` whose node metadata holds the sizes of a call with ``args``."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    graph = fx.Graph()
    output = graph.graph_copy(gm.graph, {})
    graph.output(output)
    copy = fx.GraphModule(gm, graph)
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    fakes = [fake_mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
    grad_enabled = torch.is_grad_enabled()
    try:
        with fake_mode:
            _Propagate(copy).run(*fakes)
    finally:  # the graph may switch grad mode (Dynamo records it as nodes)
        torch._C._set_grad_enabled(grad_enabled)
    return copy
