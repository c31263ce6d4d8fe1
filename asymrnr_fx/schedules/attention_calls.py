"""The video self-attention calls of an eager model run, seen by calibration.

Calibration measures the *baseline* model, so it runs eagerly and watches
``F.scaled_dot_product_attention``: a call whose Q and K have the same length, the video
tokens plus the text segment, is an attention site. Sites are numbered in call order within
one forward (the backend's "layer"); steps are counted by the package's one
:class:`~asymrnr_fx.steps.StepTracker` (told by ``set_step``, else guessed from the model's
``timestep`` input, so CFG in two calls counts once).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..steps import StepTracker

__all__ = ["VideoSpan", "SiteCall", "AttentionCalls"]

_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")


@dataclass(frozen=True)
class VideoSpan:
    """Where the video tokens sit in a joint text + video attention sequence.

    ``text_tokens`` None accepts whatever is not video; ``text_side`` is ``"before"`` or
    ``"after"`` the video (required when there is text).
    """

    num_video: int
    text_tokens: int | None = None
    text_side: str | None = None

    def __post_init__(self) -> None:
        if self.text_side not in (None, "before", "after"):
            raise ValueError(f"text_side={self.text_side!r} is invalid: None, 'before' or 'after'")

    def video_start(self, seq_len: int) -> int | None:
        """Start of the video tokens in a sequence of ``seq_len``, None if it is not one."""
        text = seq_len - self.num_video
        if text < 0 or (self.text_tokens is not None and text != self.text_tokens):
            return None
        if text > 0 and self.text_side is None:
            raise ValueError(
                f"attention has {seq_len} tokens, {text} more than the {self.num_video} video "
                "tokens: pass text_side='before' or 'after' (where the text segment sits)"
            )
        return text if self.text_side == "before" else 0


@dataclass
class SiteCall:
    """One video self-attention call: where it ran and its SDPA arguments."""

    step: int
    site: int
    branch: str | int
    video_start: int
    num_video: int
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    attn_mask: torch.Tensor | None
    scale: float | None

    @property
    def text_tokens(self) -> int:
        return self.query.shape[-2] - self.num_video


SiteHandler = Callable[[SiteCall, Callable[[], torch.Tensor]], torch.Tensor | None]


def _sdpa_arguments(args: tuple, kwargs: dict) -> dict[str, Any]:
    bound = dict(zip(_SDPA_ARGS, args, strict=False))
    bound.update(kwargs)
    return bound


class AttentionCalls(TorchFunctionMode):
    """Hand every video self-attention call of ``model`` to ``handler`` while active.

    ``handler(call, attend)`` gets the :class:`SiteCall` and a function that runs the
    original SDPA; it returns the attention output to use (None: the original's). Use as a
    context manager around eager runs of ``model``; :meth:`close` removes the forward hook.
    """

    def __init__(self, model: torch.nn.Module, span: VideoSpan, handler: SiteHandler) -> None:
        super().__init__()
        self.span = span
        self.handler = handler
        self.tracker = StepTracker()
        self.site = 0
        self.sites_per_forward: set[int] = set()
        self.text_seen: int | None = None
        self._hook = model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)

    def close(self) -> None:
        self._end_forward()
        self._hook.remove()

    def set_step(self, step: int) -> None:
        """Step ``step`` runs next (turns guessing off)."""
        self.tracker.tell_step(int(step))

    def replay_step(self, step: int) -> None:
        """Step ``step`` runs again: its forwards (CFG branches) count from the first."""
        self.tracker.reset()
        self.tracker.tell_step(int(step))

    def _end_forward(self) -> None:
        if self.tracker.forwards_in_step or self.site:
            self.sites_per_forward.add(self.site)

    def _pre_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self._end_forward()
        tracker = self.tracker
        if not tracker.told:
            timestep = kwargs.get("timestep")
            if isinstance(timestep, torch.Tensor) and timestep.numel():
                tracker.observe_timestep(timestep)
            else:  # without a timestep every forward is a step
                tracker.advance()
        tracker.start_forward()
        self.site = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        bound = _sdpa_arguments(args, kwargs)
        call = self._site_call(bound)
        if call is None:
            return func(*args, **kwargs)
        out = self.handler(call, lambda: func(*args, **kwargs))
        return func(*args, **kwargs) if out is None else out

    def _site_call(self, bound: dict[str, Any]) -> SiteCall | None:
        q, k = bound["query"], bound["key"]
        if q.dim() != 4 or k.shape[-2] != q.shape[-2] or bound.get("is_causal"):
            return None  # cross-attention or causal: never a site
        start = self.span.video_start(q.shape[-2])
        if start is None:
            return None
        if self.tracker.step < 0:
            raise ValueError("attention ran before the first step: call set_step(0) first")
        site = self.site
        self.site += 1
        self.text_seen = q.shape[-2] - self.span.num_video
        return SiteCall(self.tracker.step, site, self.tracker.branch, start, self.span.num_video,
                        q, k, bound["value"], bound.get("attn_mask"), bound.get("scale"))
