"""asymrnr-fx: AsymRnR video DiT acceleration as a ``torch.compile`` backend.

``torch.compile(transformer, backend="asymrnr")`` or, with settings,
``torch.compile(transformer, backend=asymrnr_fx.backend(kv_ratio=0.5, q_ratio=0.3))``, or for a
diffusers pipeline ``asymrnr_fx.apply(pipe, schedule="cogvideox-2b")``.
"""

from __future__ import annotations

import warnings
from typing import Any

from .config import AsymRnRConfig
from .context_parallel import enable_context_parallel
from .dynamo_backend import AsymRnRBackend, asymrnr_backend, backend
from .ops import site_partition
from .pipeline import StepCallback, apply, remove, states_of
from .processors import prepare, unprepare
from .schedules.schedule import Schedule
from .state import AsymRnRState

__all__ = [
    "backend", "AsymRnRBackend", "AsymRnRConfig", "AsymRnRState", "Schedule", "StepCallback",
    "apply", "remove", "states_of", "reset", "site_partition", "enable_context_parallel",
    "prepare", "unprepare",
]
__version__ = "0.1.0"


def reset(target: Any = None) -> None:
    """Forget step count, matching cache and statistics of ``target`` (a backend, a state or
    an applied pipeline), or of the registered ``"asymrnr"`` backend when None."""
    for state in states_of(asymrnr_backend if target is None else target):
        state.reset()


def __getattr__(name: str) -> Any:
    if name == "DISPATCHER":  # the process-wide state of earlier versions
        warnings.warn(
            "asymrnr_fx.DISPATCHER is deprecated: each backend has its own state "
            "(asymrnr_fx.backend(...).state, asymrnr_fx.states_of(pipe)); this is the state of "
            "the registered 'asymrnr' backend", DeprecationWarning, stacklevel=2)
        return asymrnr_backend.state
    raise AttributeError(f"module 'asymrnr_fx' has no attribute {name!r}")
