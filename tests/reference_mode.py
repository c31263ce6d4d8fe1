"""AsymRnR by the independent reference, inside an eager model: what a rewritten model should
compute, written without the package (nothing here imports it).

``ReferenceAsymRnR`` is a torch function mode: every ``scaled_dot_product_attention`` call
that is video self-attention (query, key and value of one length: the video grid plus the
model's text tokens on the given side, no causal flag) becomes :func:`reference_attention`
with the partition, kept counts and matching cache the method prescribes for that (site,
step): the site is the call's index within the forward, the partition is drawn afresh per
(site, component, refresh window), matching is recomputed at refresh steps (every
``cache_interval`` steps from step 0) or when no match of this site, component, CFG branch,
window and kept count is cached, and reused otherwise.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .reference import reference_attention, reference_kept, reference_partition, reference_site_seed


def _sdpa_args(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,  # noqa: ANN001, ANN202
               enable_gqa=False):
    pass


_SIGNATURE = inspect.signature(_sdpa_args)


class ReferenceAsymRnR(TorchFunctionMode):
    """Replace the video self-attention calls of an eager model by the reference algorithm."""

    def __init__(self, *, grid: tuple[int, int, int], text_tokens: int, text_side: str | None,
                 ratios: Callable[[int, int], tuple[float, float]], stride=(2, 2, 2), seed: int = 0,
                 cache_interval: int = 5, metric: str = "l2", match_on: str = "v", merge: str = "drop") -> None:
        super().__init__()
        self.grid, self.text_tokens, self.text_side = tuple(grid), text_tokens, text_side
        self.video_len = math.prod(grid)
        self.ratios, self.stride, self.seed = ratios, tuple(stride), seed
        self.cache_interval, self.metric, self.match_on, self.merge = cache_interval, metric, match_on, merge
        self.cache: dict[tuple, tuple[int, int, dict]] = {}
        self.step, self.site, self.branch = 0, 0, 0
        self.calls = 0  # video self-attention calls replaced

    def begin_forward(self, step: int, branch: object = 0) -> None:
        self.step, self.site, self.branch = step, 0, branch

    def _is_video_self_attention(self, q, k, v, mask, is_causal) -> bool:  # noqa: ANN001
        seq = self.video_len + self.text_tokens
        if q.dim() != 4 or is_causal or not (q.shape[-2] == k.shape[-2] == v.shape[-2] == seq):
            return False
        return mask is None or mask.shape[-2] == 1  # key masks only

    def _matches(self, component: str, keep: int, window: int) -> dict:
        """The cached matches of this site and component (refreshed at refresh steps, or
        when none were made for this branch, window and kept count)."""
        key = (self.site, component, self.branch)
        cached = self.cache.get(key)
        if self.step % self.cache_interval == 0 or cached is None or cached[:2] != (window, keep):
            cached = self.cache[key] = (window, keep, {})
        return cached[2]

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        bound = _SIGNATURE.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        q, k, v, mask = a["query"], a["key"], a["value"], a["attn_mask"]
        if not self._is_video_self_attention(q, k, v, mask, a["is_causal"]):
            return func(*args, **kwargs)
        q_ratio, kv_ratio = self.ratios(self.step, self.site)
        window = self.step // self.cache_interval
        parts, keeps, stores, matches = {}, {}, {}, {}
        for component, ratio in (("q", q_ratio), ("kv", kv_ratio)):
            dst, src = reference_partition(self.grid, self.stride,
                                           reference_site_seed(self.seed, self.site, component, window))
            keep = reference_kept(self.video_len, ratio, len(dst)) if ratio > 0 else self.video_len
            parts[component] = (dst, src)
            keeps[component] = keep if keep < self.video_len else None
            if keeps[component] is not None:
                stores[component] = self._matches(component, keep, window)
                matches.update(stores[component])
        out = reference_attention(
            q, k, v, mask, video_start=self.text_tokens if self.text_side == "before" else 0,
            video_len=self.video_len, q_partition=parts["q"], kv_partition=parts["kv"],
            q_keep=keeps["q"], kv_keep=keeps["kv"], metric=self.metric, merge=self.merge,
            match_on=self.match_on, scale=a["scale"], matches=matches)
        for component, store in stores.items():  # what was matched now stays for the window
            store.update({key: m for key, m in matches.items() if key[0] == component})
        self.site += 1
        self.calls += 1
        return out.to(q.dtype)
