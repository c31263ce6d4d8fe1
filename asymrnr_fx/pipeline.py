"""One call to accelerate a diffusers pipeline: ``apply(pipe, config)`` and ``remove(pipe)``.

In the spirit of diffusers' ``enable_cache`` and tomesd's ``apply_patch``: it compiles the
pipeline's transformer with the AsymRnR backend in place (whole model, or its repeated blocks)
and wires step tracking to the pipeline's scheduler, so a new generation, and its step count,
are known exactly rather than inferred from timestep values.
"""

from __future__ import annotations

from typing import Any

import torch

from .backend import backend
from .config import AsymRnRConfig
from .dispatcher import DISPATCHER

__all__ = ["apply", "remove"]

_STATE = "_asymrnr_state"


def _transformer(pipe: Any) -> torch.nn.Module:
    module = getattr(pipe, "transformer", pipe)
    if not isinstance(module, torch.nn.Module):
        raise ValueError(
            f"{type(pipe).__name__} has no `transformer` module: pass a diffusers video pipeline "
            "or the transformer itself"
        )
    return module


def apply(
    pipe: Any,
    config: AsymRnRConfig | None = None,
    *,
    regional: bool = False,
    inner: str = "inductor",
    mode: str | None = None,
    options: dict[str, Any] | None = None,
    **fields: Any,
) -> Any:
    """Compile ``pipe.transformer`` with the AsymRnR backend and track its denoising steps.

    Args:
        pipe: a diffusers pipeline (or a bare transformer; then steps follow timesteps).
        config: backend settings; ``fields`` are applied on top (e.g. ``kv_ratio=0.5``).
        regional: compile only the repeated blocks (``compile_repeated_blocks``): faster to
            compile; the layer index follows the call order within each step.
        inner, mode, options: as for :func:`asymrnr_fx.backend` and ``torch.compile``.

    Returns ``pipe``. Undo with :func:`remove`.
    """
    transformer = _transformer(pipe)
    if hasattr(transformer, _STATE):
        raise ValueError("AsymRnR is already applied to this transformer: call remove(pipe) first")
    compile_kwargs: dict[str, Any] = {"backend": backend(config, inner, **fields)}
    if mode is not None:
        compile_kwargs["mode"] = mode
    if options is not None:
        compile_kwargs["options"] = options
    if regional:
        transformer.compile_repeated_blocks(**compile_kwargs)
    else:
        transformer.compile(**compile_kwargs)

    scheduler = getattr(pipe, "scheduler", None)
    if scheduler is not None and hasattr(scheduler, "set_timesteps"):
        original = scheduler.set_timesteps

        def set_timesteps(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            DISPATCHER.begin_generation(len(scheduler.timesteps))
            return result

        scheduler.set_timesteps = set_timesteps
    setattr(transformer, _STATE, {"scheduler": scheduler, "regional": regional})
    DISPATCHER.reset()
    return pipe


def remove(pipe: Any) -> Any:
    """Undo :func:`apply`: the transformer runs uncompiled again and step tracking is unhooked."""
    transformer = _transformer(pipe)
    state = getattr(transformer, _STATE, None)
    if state is None:
        return pipe
    for module in transformer.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None
    scheduler = state["scheduler"]
    if scheduler is not None and "set_timesteps" in vars(scheduler):
        del scheduler.set_timesteps
    delattr(transformer, _STATE)
    DISPATCHER.reset()
    return pipe
