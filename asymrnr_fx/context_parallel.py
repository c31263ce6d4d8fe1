"""AsymRnR under diffusers' context parallelism: what is supported, and turning it on.

**Ulysses** (``ContextParallelConfig(ulysses_degree=W)``) is supported: every process attends
over the whole sequence for H/W of the heads, and AsymRnR matches per head, so each process
computes exactly what single-process AsymRnR computes for its heads (the pass proves the
exchange and reads the layout of the whole sequence, see :mod:`asymrnr_fx.passes.parallel`).

**Ring** (``ring_degree`` > 1, alone or with Ulysses) is refused: a process only ever holds a
shard of the keys and values, while AsymRnR matches every token against the dst tokens of the
*whole* video and keeps ``int(N * (1 - r))`` tokens of it. Matching per shard would be a
different algorithm (other dst, other kept tokens), and diffusers gathers the shards inside
its ring loop, around kernels that return log-sum-exp, not at the attention call the pass
rewrites.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from .models import family_of

__all__ = ["enable_context_parallel", "check_context_parallel", "RING_REFUSAL", "prepare_for_compile"]

RING_REFUSAL = (
    "AsymRnR does not support ring attention (ring_degree > 1): each process holds only a shard "
    "of the keys and values, while AsymRnR matches tokens against the whole video. Use "
    "ContextParallelConfig(ulysses_degree=...) instead (every process then sees the whole "
    "sequence for some heads, and AsymRnR computes exactly what it computes on one GPU)."
)


def _cp_config(config: Any) -> Any:
    """The ContextParallelConfig inside a ParallelConfig (or the config itself)."""
    return getattr(config, "context_parallel_config", config)


def check_context_parallel(config: Any) -> None:
    """Raise ``ValueError`` for a context-parallel config AsymRnR cannot serve (ring)."""
    cp = _cp_config(config)
    if cp is not None and (getattr(cp, "ring_degree", 1) or 1) > 1:
        raise ValueError(f"{RING_REFUSAL} Got ring_degree={cp.ring_degree}.")


def _install_processors(transformer: torch.nn.Module, processor: type, prefixes: tuple[str, ...]) -> None:
    """``processor`` for the attention under ``prefixes``, keeping an attention backend the
    user chose (``set_attention_backend``)."""
    for name, module in transformer.named_modules():
        old = getattr(module, "processor", None)
        if name.startswith(prefixes) and old is not None:
            new = processor()
            new._attention_backend = getattr(old, "_attention_backend", None)
            module.set_processor(new)


def enable_context_parallel(transformer: torch.nn.Module, config: Any = None) -> torch.nn.Module:
    """``transformer.enable_parallelism(config=config)`` with what AsymRnR needs.

    Refuses ring attention; gives models without a diffusers ``_cp_plan`` (CogVideoX,
    HunyuanVideo) the plan and attention processors this package ships
    (:mod:`asymrnr_fx.cp_plans`); then readies diffusers' hooks for ``torch.compile``
    (:func:`prepare_for_compile`). A transformer already made parallel (by diffusers'
    ``enable_parallelism`` or ``from_pretrained(parallel_config=...)``) is only checked and
    readied. ``torch.distributed`` must be initialized. Returns ``transformer``.
    """
    if config is not None:
        check_context_parallel(config)
    existing = getattr(transformer, "_parallel_config", None)
    if existing is not None:
        check_context_parallel(existing)
    elif config is None:
        raise ValueError("no ContextParallelConfig given and the transformer is not parallel")
    else:
        plan = _shipped_plan(transformer) if getattr(transformer, "_cp_plan", None) is None else None
        transformer.enable_parallelism(config=config, cp_plan=plan)
    prepare_for_compile(transformer)
    return transformer


def _shipped_plan(transformer: torch.nn.Module) -> dict[str, Any]:
    """The plan shipped for the transformer's family, its attention processors installed."""
    family = family_of(transformer)
    shipped = family.context_parallel if family else None
    if shipped is None:
        raise ValueError(f"{type(transformer).__name__} has no context-parallel plan in diffusers "
                         "and none is shipped here (CogVideoX and HunyuanVideo are)")
    reason = shipped.unsupported(transformer)
    if reason:
        raise ValueError(f"the shipped context-parallel plan does not cover this model: {reason}")
    if shipped.processor is not None:
        _install_processors(transformer, shipped.processor, shipped.processor_of)
    return shipped.plan()


def prepare_for_compile(transformer: torch.nn.Module) -> None:
    """Let Dynamo trace diffusers' context-parallel split hooks without a graph break.

    A split hook reads its module's ``forward`` signature with ``inspect.signature`` on its
    first call, which Dynamo cannot trace: the graph breaks there, the transformer's own frame
    runs eagerly, and the attention sites end up in graphs that no longer show the patch
    embedding (and so the video grid). The hook caches the signature; this fills the cache
    ahead of time, exactly as the hook's first call would. Idempotent.
    """
    from diffusers.hooks.context_parallel import ContextParallelSplitHook

    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        for hook in getattr(registry, "hooks", {}).values():
            metadata = getattr(hook, "module_forward_metadata", None)
            if not isinstance(hook, ContextParallelSplitHook) or metadata is None:
                continue
            if metadata.cached_parameter_indices is None:
                names = list(inspect.signature(metadata._cls.forward).parameters)[1:]  # skip self
                metadata.cached_parameter_indices = {name: i for i, name in enumerate(names)}
