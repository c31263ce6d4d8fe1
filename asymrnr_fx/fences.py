"""Step caches under ``torch.compile``: their per-step logic runs eagerly, the work they guard
runs compiled.

diffusers' step caches (FirstBlockCache, TaylorSeer, PyramidAttentionBroadcast, FasterCache,
MagCache) are hooks that wrap a module's ``forward`` and decide each step, from Python state,
whether to compute it, reuse it or predict it. Traced by Dynamo, that state becomes guards: the
graph recompiles every step and, past Dynamo's recompile limit, runs eagerly, with neither
Inductor nor AsymRnR (MagCache fences its own hooks with ``torch.compiler.disable`` instead, so
nothing under them compiles at all).

A :class:`Fence` turns that around for one application. For every module whose diffusers hook
registry holds a step cache (and for the transformer itself):

* the module's hook chain (the cache's decisions) is wrapped in ``torch.compiler.disable``, so
  it runs eagerly, exactly as diffusers runs it without compilation;
* the module's own ``forward`` under the chain (the registry's innermost original) is replaced
  by one ``torch.compile`` of it with the application's backend: what the cache computes is
  compiled and rewritten by AsymRnR, once for every module of the same class and input sizes.

A compiled graph that calls a fenced module breaks there; Dynamo then runs the calling frame
(the transformer's block loop) eagerly and compiles the modules it calls one by one. The caches
keep their semantics; a data-dependent cache (FirstBlockCache's threshold, MagCache's
accumulated error) reads its scalar on the host in its own eager code, one device sync per
decision, as it does uncompiled. :meth:`Fence.refresh` follows caches enabled or disabled after
:func:`asymrnr_fx.apply` (checked at every forward: a walk over the module tree).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["CACHE_HOOKS", "Fence", "cache_hooks_of"]

logger = logging.getLogger("asymrnr_fx")

CACHE_HOOKS = frozenset({
    "fbc_leader_block_hook", "fbc_block_hook",  # FirstBlockCache
    "taylorseer_cache",  # TaylorSeer
    "pyramid_attention_broadcast",  # PAB
    "faster_cache_denoiser", "faster_cache_block",  # FasterCache
    "mag_cache_leader_block_hook", "mag_cache_block_hook",  # MagCache
    "asymrnr_block_reuse",  # a schedule's block reuse (asymrnr_fx.block_reuse)
})
"""Names under which diffusers registers its step-cache hooks (``diffusers.hooks``), and the
block-reuse hook of a schedule that reuses blocks."""


def cache_hooks_of(module: torch.nn.Module) -> tuple[str, ...]:
    """The step-cache hooks registered on ``module`` itself, in registration order."""
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None:
        return ()
    return tuple(name for name in registry._hook_order if name in CACHE_HOOKS)


@dataclass
class _Fenced:
    """What a fence changed on one module, to undo it."""

    module: torch.nn.Module
    fn_ref: Any  # the registry's innermost function reference
    attribute: str  # "original_forward" or "forward": where the innermost original sits
    original: Callable[..., Any]
    compiled: Callable[..., Any]
    outer: Callable[..., Any] | None  # the hook chain before it was fenced (None: left as it was)
    fenced_outer: Callable[..., Any] | None

    def holds(self) -> bool:
        """True while the registry still runs through this fence."""
        registry = self.module._diffusers_hook
        return (bool(registry._fn_refs) and registry._fn_refs[0] is self.fn_ref
                and getattr(self.fn_ref, self.attribute) is self.compiled
                and (self.fenced_outer is None or self.module.forward is self.fenced_outer))


class Fence:
    """Keeps step-cache decisions out of the compiled graphs of one transformer (see the
    module docstring). ``compile_fn(fn)`` compiles one module's forward with the application's
    backend and settings. With ``whole``, the transformer's own forward is compiled here too;
    its hook chain needs no ``disable``, since the transformer itself is not called under
    ``torch.compile`` (``apply``'s hook calls into the chain)."""

    def __init__(self, transformer: torch.nn.Module, compile_fn: Callable[[Callable[..., Any]], Callable[..., Any]],
                 *, whole: bool = True, go_regional: Callable[[], bool] | None = None) -> None:
        self.transformer = transformer
        self.compile_fn = compile_fn
        self.whole = whole
        # Called once when a step cache appears under a whole-model compile: compiles the
        # repeated blocks instead (True) or cannot (False); see refresh.
        self.go_regional = go_regional
        self.went_regional = False
        self.fenced: dict[int, _Fenced] = {}
        self.signature: tuple[Any, ...] | None = None

    def _signature(self) -> tuple[Any, ...]:
        return tuple((id(m), tuple(m._diffusers_hook._hook_order), id(m.forward))
                     for m in self.transformer.modules() if getattr(m, "_diffusers_hook", None) is not None)

    def refresh(self) -> None:
        """Fence the modules that hold a step cache now; unfence those that lost theirs."""
        signature = self._signature()
        if signature == self.signature:
            return
        caches = any(cache_hooks_of(m) for m in self.transformer.modules() if m is not self.transformer)
        if caches and self.whole and self.go_regional is not None and self.go_regional():
            # A compiled frame of the transformer's own code would break at the first fenced block,
            # inside the block loop, and Dynamo then skips that code for good: every model of the
            # class in the process, cached or not, would lose its whole-model graph. So with a
            # step cache the transformer's own code runs eagerly and its blocks are compiled.
            self.whole, self.went_regional = False, True
            logger.info("asymrnr: %s: a step cache is enabled, so its repeated blocks are compiled "
                        "(regional compilation) instead of the whole model", type(self.transformer).__name__)
        wanted = {id(m): m for m in self.transformer.modules()
                  if cache_hooks_of(m) or (self.whole and m is self.transformer)}
        for key in [k for k in self.fenced if k not in wanted]:
            self._unfence(self.fenced.pop(key))
        for key, module in wanted.items():
            current = self.fenced.get(key)
            if current is not None and current.holds():
                continue
            if current is not None:  # hooks were added or removed around it: fence afresh
                self._unfence(self.fenced.pop(key))
            self.fenced[key] = self._fence(module)
        names = sorted({n for m in wanted.values() for n in cache_hooks_of(m)})
        if names:
            logger.info("asymrnr: %s: step cache hooks %s on %d module(s) run eagerly around compiled forwards",
                        type(self.transformer).__name__, ", ".join(names),
                        sum(bool(cache_hooks_of(m)) for m in wanted.values()))
        self.signature = self._signature()

    def _fence(self, module: torch.nn.Module) -> _Fenced:
        registry = module._diffusers_hook
        fn_ref = registry._fn_refs[0]
        attribute = "original_forward" if getattr(fn_ref, "original_forward", None) is not None else "forward"
        original = getattr(fn_ref, attribute)
        compiled = self.compile_fn(original)
        setattr(fn_ref, attribute, compiled)
        outer = fenced_outer = None
        if module is not self.transformer:  # called inside a compiled graph: its hooks run eagerly
            outer = module.forward
            fenced_outer = torch.compiler.disable(outer)
            module.forward = fenced_outer
        return _Fenced(module, fn_ref, attribute, original, compiled, outer, fenced_outer)

    @staticmethod
    def _unfence(fenced: _Fenced) -> None:
        if getattr(fenced.fn_ref, fenced.attribute) is fenced.compiled:
            setattr(fenced.fn_ref, fenced.attribute, fenced.original)
        if fenced.fenced_outer is not None and fenced.module.forward is fenced.fenced_outer:
            fenced.module.forward = fenced.outer

    def remove(self) -> None:
        """Undo every fence (``asymrnr_fx.remove``)."""
        for fenced in self.fenced.values():
            self._unfence(fenced)
        self.fenced.clear()
        self.signature = None
