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

__all__ = ["apply", "remove", "latent_grid"]

_STATE = "_asymrnr_state"


def _transformer(pipe: Any) -> torch.nn.Module:
    module = getattr(pipe, "transformer", pipe)
    if not isinstance(module, torch.nn.Module):
        raise ValueError(
            f"{type(pipe).__name__} has no `transformer` module: pass a diffusers video pipeline "
            "or the transformer itself"
        )
    return module


def _patch_sizes(config: Any) -> tuple[int, int, int]:
    patch = config.get("patch_size", 1) or 1
    if isinstance(patch, (tuple, list)):  # Wan: (t, h, w)
        return tuple(int(p) for p in patch)  # type: ignore[return-value]
    return int(config.get("patch_size_t", 1) or 1), int(patch), int(patch)


def latent_grid(transformer: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[int, int, int] | None:
    """The video token grid of this call, from the latent shape and the model's patch sizes.

    Used as a hint where the graph does not show the grid (LTX-Video's pre-patchified tokens,
    or repeated blocks compiled alone); the graph's own evidence wins.
    """
    config = getattr(transformer, "config", None)
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    if config is None or not isinstance(hidden, torch.Tensor):
        return None
    pt, ph, pw = _patch_sizes(config)
    if hidden.dim() == 5:
        # CogVideoX lays latents out as (B, F, C, H, W); the others as (B, C, F, H, W).
        frames = hidden.shape[1] if type(transformer).__name__.startswith("CogVideoX") else hidden.shape[2]
        height, width = hidden.shape[-2:]
    elif hidden.dim() == 3 and all(isinstance(kwargs.get(k), int) for k in ("num_frames", "height", "width")):
        frames, height, width = kwargs["num_frames"], kwargs["height"], kwargs["width"]
    else:
        return None
    return -(-frames // pt), height // ph, width // pw


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
    def hint_grid(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        DISPATCHER.grid_hint = latent_grid(module, args, kwargs)

    hook = transformer.register_forward_pre_hook(hint_grid, with_kwargs=True)
    setattr(transformer, _STATE, {"scheduler": scheduler, "regional": regional, "hook": hook})
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
    state["hook"].remove()
    scheduler = state["scheduler"]
    if scheduler is not None and "set_timesteps" in vars(scheduler):
        del scheduler.set_timesteps
    delattr(transformer, _STATE)
    DISPATCHER.reset()
    return pipe
