"""asymrnr-fx: AsymRnR video DiT acceleration as a ``torch.compile`` backend.

``torch.compile(transformer, backend="asymrnr")`` or, with settings,
``torch.compile(transformer, backend=asymrnr_fx.backend(kv_ratio=0.5, q_ratio=0.3))``, or for a
diffusers pipeline ``asymrnr_fx.apply(pipe, schedule="cogvideox-2b")``.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import AsymRnRConfig
    from .context_parallel import enable_context_parallel
    from .dynamo_backend import AsymRnRBackend, backend
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

# The public names, imported on first use: `import asymrnr_fx` (and `asymrnr --help`) does not
# import torch or diffusers until something that needs them is touched.
_EXPORTS = {
    "AsymRnRConfig": ".config", "enable_context_parallel": ".context_parallel",
    "AsymRnRBackend": ".dynamo_backend", "asymrnr_backend": ".dynamo_backend", "backend": ".dynamo_backend",
    "site_partition": ".ops", "StepCallback": ".pipeline", "apply": ".pipeline", "remove": ".pipeline",
    "states_of": ".pipeline", "prepare": ".processors", "unprepare": ".processors",
    "Schedule": ".schedules.schedule", "AsymRnRState": ".state",
}


def reset(target: Any = None) -> None:
    """Forget step count, matching cache and statistics of ``target`` (a backend, a state or
    an applied pipeline), or of the registered ``"asymrnr"`` backend when None."""
    from .dynamo_backend import asymrnr_backend
    from .pipeline import states_of

    for state in states_of(asymrnr_backend if target is None else target):
        state.reset()


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name == "DISPATCHER":  # the process-wide state of earlier versions
        warnings.warn(
            "asymrnr_fx.DISPATCHER is deprecated: each backend has its own state "
            "(asymrnr_fx.backend(...).state, asymrnr_fx.states_of(pipe)); this is the state of "
            "the registered 'asymrnr' backend", DeprecationWarning, stacklevel=2)
        from .dynamo_backend import asymrnr_backend

        return asymrnr_backend.state
    raise AttributeError(f"module 'asymrnr_fx' has no attribute {name!r}")
