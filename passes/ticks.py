"""Find the graph input that carries the noise level (what ticks the denoising steps).

A diffusion transformer turns its noise level (timestep, sigma, ``t``: whatever the model
calls it) into a sinusoidal embedding. So the tick input is found by what the graph does with
it, not by its name: a tensor input of at most one dimension (one value, or one per sample)
that a ``sin`` or ``cos`` is computed from. The name ``timestep`` (any dimensions: per-token
timesteps) only breaks ties, so renaming the input never changes what is found. By name, last:
a ``timestep`` input whose embedding lies in another graph, and for repeated blocks compiled
alone (they see no noise level, only the embedding made from it) an input named ``temb``.
"""

from __future__ import annotations

import re
from collections import deque

import torch
import torch.fx as fx

__all__ = ["find_tick_input", "feeds_sinusoid"]

_SINUSOIDS = {torch.sin, torch.cos, torch.Tensor.sin, torch.Tensor.cos, torch.ops.aten.sin.default,
              torch.ops.aten.cos.default}
_SINUSOID_METHODS = {"sin", "cos"}
# Dynamo names placeholders after their source: `L_timestep_` -> `l_timestep_`.
_TIMESTEP_NAME = re.compile(r"(^|_)timesteps?_?$", re.IGNORECASE)
_TEMB_NAME = re.compile(r"(^|_)temb_?$", re.IGNORECASE)


def feeds_sinusoid(node: fx.Node, max_depth: int = 12) -> bool:
    """Whether a ``sin`` or ``cos`` is computed from ``node`` within ``max_depth`` edges."""
    seen = {node}
    queue: deque[tuple[fx.Node, int]] = deque([(node, 0)])
    while queue:
        current, depth = queue.popleft()
        if current is not node and (
                (current.op == "call_function" and current.target in _SINUSOIDS)
                or (current.op == "call_method" and current.target in _SINUSOID_METHODS)):
            return True
        if depth >= max_depth:
            continue
        for user in current.users:
            if user not in seen:
                seen.add(user)
                queue.append((user, depth + 1))
    return False


def _value(node: fx.Node) -> object:
    return node.meta.get("example_value", node.meta.get("val"))


def find_tick_input(graph: fx.Graph) -> tuple[str | None, int | None]:
    """``(kind, input position)`` of the graph's tick input: ``("timestep", i)`` for the noise
    level, ``("temb", i)`` for a repeated block's time embedding, else ``(None, None)``."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    candidates = []
    for index, node in enumerate(placeholders):
        value = _value(node)
        if not isinstance(value, torch.Tensor) or value.dim() > 2:
            continue
        named = bool(_TIMESTEP_NAME.search(node.name))
        if (value.dim() <= 1 or named) and feeds_sinusoid(node):
            candidates.append((not named, index))  # the name breaks ties only
    if candidates:
        return "timestep", min(candidates)[1]
    for kind, pattern in (("timestep", _TIMESTEP_NAME), ("temb", _TEMB_NAME)):
        for index, node in enumerate(placeholders):
            if pattern.search(node.name) and isinstance(_value(node), torch.Tensor):
                return kind, index
    return None, None
