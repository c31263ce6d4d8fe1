"""asymrnr-fx: AsymRnR video DiT acceleration as a ``torch.compile`` backend.

``torch.compile(transformer, backend="asymrnr")`` or, with settings,
``torch.compile(transformer, backend=asymrnr_fx.backend(kv_ratio=0.5, q_ratio=0.3))``.
"""

from .backend import backend
from .config import AsymRnRConfig
from .dispatcher import DISPATCHER, StepCallback, step
from .pipeline import apply, remove
from .schedule import Schedule

__all__ = [
    "backend", "AsymRnRConfig", "Schedule", "DISPATCHER", "StepCallback", "step", "reset",
    "apply", "remove",
]
__version__ = "0.1.0"


def reset() -> None:
    """Forget step count, matching cache and statistics (e.g. between unrelated runs)."""
    DISPATCHER.reset()
