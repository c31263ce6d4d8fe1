"""Backward walks over an FX graph (shared by the site and layout inference)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

import torch.fx as fx

__all__ = ["ancestors"]


def ancestors(node: fx.Node, max_depth: int, stop: Callable[[fx.Node], bool] | None = None) -> Iterator[fx.Node]:
    """``node`` and its inputs, breadth first, up to ``max_depth`` edges back.

    The walk yields a node where ``stop`` is true but does not go past it.
    """
    seen = {node}
    queue: deque[tuple[fx.Node, int]] = deque([(node, 0)])
    while queue:
        current, depth = queue.popleft()
        yield current
        if depth >= max_depth or (current is not node and stop is not None and stop(current)):
            continue
        for parent in current.all_input_nodes:
            if parent not in seen:
                seen.add(parent)
                queue.append((parent, depth + 1))
