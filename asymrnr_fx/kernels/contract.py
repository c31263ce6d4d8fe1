"""The contract both matching implementations share: metrics, the norm epsilon, and the
input checks (so the chunked path and the fused kernel never disagree on what is valid)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["METRICS", "NORM_EPS", "check_inputs"]

METRICS = ("l2", "cosine")
NORM_EPS = 1e-6


def check_inputs(src: Tensor, dst: Tensor, metric: str) -> None:
    """Raise a ValueError that names the problem with ``src``, ``dst`` or ``metric``."""
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is invalid: choose one of {METRICS}")
    if src.dim() < 2 or dst.dim() < 2:
        raise ValueError(
            f"src and dst must be (..., N, D); got shapes {tuple(src.shape)} and {tuple(dst.shape)}"
        )
    if src.shape[:-2] != dst.shape[:-2] or src.shape[-1] != dst.shape[-1]:
        raise ValueError(
            "src (..., Ns, D) and dst (..., Nd, D) need the same leading dims and D; got "
            f"{tuple(src.shape)} and {tuple(dst.shape)}"
        )
    if dst.shape[-2] == 0 and src.shape[-2] > 0:
        raise ValueError("dst has no rows: there is no nearest dst for any src row")
    if not (src.is_floating_point() and dst.is_floating_point()):
        raise ValueError(f"src and dst must be floating point; got {src.dtype} and {dst.dtype}")
    if src.device != dst.device:
        raise ValueError(f"src and dst are on different devices: {src.device} and {dst.device}")
