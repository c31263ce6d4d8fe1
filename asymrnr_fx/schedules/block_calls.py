"""The transformer-block calls of an eager model run, seen by calibration of block reuse.

Blocks are the ones a schedule's reuse table addresses (:func:`asymrnr_fx.block_reuse.reuse_blocks`);
each call is handed over with its inputs and outputs per stream (hidden states, and text hidden
states where the block returns them), at the step and CFG branch the attention calls of the same
run are counted at (:class:`~asymrnr_fx.schedules.attention_calls.AttentionCalls`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..block_reuse import block_inputs, block_metadata, block_outputs, reuse_blocks
from .attention_calls import AttentionCalls

__all__ = ["BlockCall", "BlockCalls"]


@dataclass
class BlockCall:
    """One block call: where it ran, its inputs and its outputs (per stream)."""

    step: int
    block: int
    branch: str | int
    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]

    def residual(self) -> tuple[torch.Tensor, ...]:
        """Output minus input per stream, detached, in float32."""
        return tuple((o.detach().float() - x.detach().float()) for o, x in zip(self.outputs, self.inputs, strict=True))


class BlockCalls:
    """Hand every block call of ``model`` to ``handler`` (forward hooks, until :meth:`close`)."""

    def __init__(self, model: torch.nn.Module, calls: AttentionCalls,
                 handler: Callable[[BlockCall], None] = lambda call: None) -> None:
        self.blocks = reuse_blocks(model)
        if not self.blocks:
            raise ValueError(f"{type(model).__name__} has no transformer block diffusers' TransformerBlockRegistry "
                             "knows, so block reuse cannot be calibrated: calibrate token cuts only")
        self.calls = calls
        self.handler = handler
        self._metadata = [block_metadata(b) for b in self.blocks]
        self._hooks = [b.register_forward_hook(functools.partial(self._seen, i), with_kwargs=True)
                       for i, b in enumerate(self.blocks)]

    def _seen(self, index: int, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        meta = self._metadata[index]
        tracker = self.calls.tracker
        self.handler(BlockCall(tracker.step, index, tracker.branch, block_inputs(meta, args, kwargs),
                               block_outputs(meta, output)))

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
