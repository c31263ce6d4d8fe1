"""Nearest dst row for every src row, without materialising the src x dst distance matrix.

Matching is the cost centre of AsymRnR: each src token looks for its nearest dst token over
the whole video. A full ``Ns x Nd`` distance matrix per head is gigabytes at real sizes, so
this module exposes one custom op, ``torch.ops.asymrnr.nearest_dst``, that returns only the
per-row minimum and its index:

* on CPU (and as the CUDA fallback) a chunked PyTorch implementation that bounds the
  distance block in memory by processing src rows (and, if needed, groups) in chunks;
* on CUDA, when Triton is importable, a fused kernel (:mod:`asymrnr_fx.kernels.triton_nearest`)
  that keeps a running min/argmin per src row while it tiles over dst, like flash attention.

It is a ``torch.library.custom_op`` with a fake implementation, so Dynamo, AOTAutograd and
Inductor see one opaque node with static output shapes.

Distances (fp32 accumulation whatever the input dtype):

* ``"l2"``: squared L2, ``(||d||^2 - 2 s.d) + ||s||^2`` in float32. The argmin is taken
  before the row constant ``||s||^2`` is added (no rounding from it decides a match).
  Rounding can leave an exact match a tiny negative number; it is not clamped.
* ``"cosine"``: ``1 - cos(s, d)``, each vector normalised in float32 with eps ``1e-6``; the
  match is the largest cosine.

Ties (exactly equal values) go to the lowest dst index.

**Which path** (``kernel``): ``"auto"`` (default) takes the fused kernel on CUDA only after a
first-call check against the chunked path on a small slice (per device, dtype and metric);
if compiling, launching or that check fails, it falls back to the chunked path with one
WARNING naming the cause. ``"triton"`` or ``"chunked"`` force a path (the config field
``AsymRnRConfig(match_kernel=...)``, or the environment variable ``ASYMRNR_MATCH_KERNEL``
when the config says ``"auto"``).
"""

from __future__ import annotations

import logging
import os

import torch
from torch import Tensor

from .contract import METRICS, NORM_EPS, check_inputs

__all__ = ["METRICS", "KERNELS", "nearest_dst", "nearest_dst_chunked", "kernel_health"]

logger = logging.getLogger("asymrnr_fx")

KERNELS = ("auto", "triton", "chunked")
KERNEL_ENV = "ASYMRNR_MATCH_KERNEL"
# Bytes the chunked path may spend on one block of fp32 distances. On CPU a block that stays
# in cache beats one big GEMM (the min pass then reads cached data, and no fresh pages are
# touched per call); on a GPU large blocks keep launches few.
CHUNK_BUDGET_BYTES = 256 * 2**20
CPU_CHUNK_BUDGET_BYTES = 8 * 2**20
# Below this many src rows per GEMM, batched GEMMs get inefficient: take fewer groups instead.
MIN_CHUNK_ROWS = 256


def _rhs(dst: Tensor, metric: str) -> Tensor:
    """dst side of the GEMM, (G, D + 1, Nd) for l2 or (G, D, Nd) for cosine, in fp32.

    l2 folds ``||d||^2`` into the GEMM: ``[s, 1] . [-2 d, ||d||^2] = ||d||^2 - 2 s.d``, so one
    GEMM and one min pass make the whole block (``-2 d`` is exact: a power-of-two scale).
    """
    d = dst.float()
    if metric == "cosine":
        return torch.nn.functional.normalize(d, dim=-1, eps=NORM_EPS).transpose(1, 2)
    return torch.cat([d * -2.0, d.square().sum(-1, keepdim=True)], dim=-1).transpose(1, 2)


def nearest_dst_chunked(
    src: Tensor, dst: Tensor, metric: str = "l2", budget_bytes: int | None = None
) -> tuple[Tensor, Tensor]:
    """Chunked PyTorch implementation of :func:`nearest_dst` (any device).

    At most about ``budget_bytes`` of fp32 distances exist at once (default: 8 MiB on CPU,
    256 MiB elsewhere): groups and src rows are processed in blocks, at least
    ``MIN_CHUNK_ROWS`` src rows per block where the budget allows.
    """
    check_inputs(src, dst, metric)
    lead, ns, nd, d = src.shape[:-2], src.shape[-2], dst.shape[-2], src.shape[-1]
    g = lead.numel()  # not reshape(-1, ...): that is ambiguous for empty tensors
    s3 = src.reshape(g, ns, d)
    d3 = dst.reshape(g, nd, d)
    dist = torch.empty(g, ns, dtype=torch.float32, device=src.device)
    idx = torch.empty(g, ns, dtype=torch.int64, device=src.device)
    if g == 0 or ns == 0:
        return dist.reshape(*lead, ns), idx.reshape(*lead, ns)
    if budget_bytes is None:
        budget_bytes = CPU_CHUNK_BUDGET_BYTES if src.device.type == "cpu" else CHUNK_BUDGET_BYTES
    budget = max(1, budget_bytes // 4)
    gblock = min(g, max(1, budget // (nd * min(ns, MIN_CHUNK_ROWS))))
    chunk = min(ns, max(1, budget // (gblock * nd)))
    for g0 in range(0, g, gblock):
        g1 = min(g, g0 + gblock)
        rhs = _rhs(d3[g0:g1], metric)
        for s0 in range(0, ns, chunk):
            s1 = min(ns, s0 + chunk)
            ss = s3[g0:g1, s0:s1].float()
            # torch.min/max over a dim return the first extreme index: ties -> lowest index.
            if metric == "l2":
                ones = ss.new_ones(*ss.shape[:-1], 1)
                vals, args = torch.bmm(torch.cat([ss, ones], dim=-1), rhs).min(dim=-1)
                # ||s||^2 is the same for the whole row: added after the argmin, which is
                # then decided on ||d||^2 - 2 s.d without its rounding.
                vals = vals + ss.square().sum(-1)
            else:
                ss = torch.nn.functional.normalize(ss, dim=-1, eps=NORM_EPS)
                vals, args = torch.bmm(ss, rhs).max(dim=-1)
                vals = 1.0 - vals
            dist[g0:g1, s0:s1] = vals
            idx[g0:g1, s0:s1] = args
    return dist.reshape(*lead, ns), idx.reshape(*lead, ns)


def _triton_can_run(src: Tensor) -> bool:
    """The fused kernel exists for this input (CUDA, Triton, head dim in range)."""
    if not src.is_cuda:
        return False
    from . import triton_nearest

    return triton_nearest.available() and triton_nearest.supports(src)


def _run_triton(src: Tensor, dst: Tensor, metric: str) -> tuple[Tensor, Tensor]:
    from . import triton_nearest

    return triton_nearest.nearest_dst_triton(src, dst, metric)


class KernelHealth:
    """Whether the fused kernel worked here, per (device, dtype, metric): a capability of the
    machine and its Triton build (like torch's backend flags), so one record per process."""

    def __init__(self) -> None:
        self.healthy: dict[tuple, bool] = {}
        self.reasons: dict[tuple, str] = {}

    def check(self, src: Tensor, dst: Tensor, metric: str) -> bool:
        """Run the kernel once on a small slice against the chunked path (cached)."""
        key = (str(src.device), src.dtype, metric)
        if key in self.healthy:
            return self.healthy[key]
        s = src.reshape(-1, *src.shape[-2:])[:1, :128]
        d = dst.reshape(-1, *dst.shape[-2:])[:1, :256]
        try:
            got_dist, got_idx = _run_triton(s, d, metric)
            want_dist, want_idx = nearest_dst_chunked(s, d, metric)
            close = torch.allclose(got_dist, want_dist, rtol=1e-2, atol=1e-2)
            agree = (got_idx == want_idx).float().mean().item() if want_idx.numel() else 1.0
            reason = "" if close and agree >= 0.99 else (
                f"its results disagree with the chunked path (distances close: {close}, "
                f"indices equal: {100 * agree:.1f}%)")
        except Exception as exc:  # compiling or launching failed: never break the user
            reason = f"it failed: {type(exc).__name__}: {exc}"
        self.healthy[key] = not reason
        if reason:
            self.fail(key, reason)
        return self.healthy[key]

    def fail(self, key: tuple, reason: str) -> None:
        self.healthy[key] = False
        self.reasons[key] = reason
        logger.warning(
            "asymrnr: the Triton matching kernel is not used on %s (%s, %s): %s. Matching runs "
            "on the chunked PyTorch path (set %s=triton to force the kernel, =chunked to skip "
            "the check)", key[0], key[1], key[2], " ".join(reason.split()), KERNEL_ENV)


kernel_health = KernelHealth()


def _choose(kernel: str) -> str:
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r} is invalid: choose one of {KERNELS}")
    if kernel == "auto":
        env = os.environ.get(KERNEL_ENV, "auto").strip().lower() or "auto"
        if env not in KERNELS:
            raise ValueError(f"{KERNEL_ENV}={env!r} is invalid: choose one of {KERNELS}")
        return env
    return kernel


@torch.library.custom_op("asymrnr::nearest_dst", mutates_args=())
def _nearest_dst_op(src: Tensor, dst: Tensor, metric: str = "l2",
                    match_kernel: str = "auto") -> tuple[Tensor, Tensor]:
    # Not named `kernel`: Inductor's fallback lowering would pass it by name to
    # FallbackKernel.create(kernel, ...) ("multiple values for argument 'kernel'").
    choice = _choose(match_kernel)
    if choice == "triton":
        return _run_triton(src, dst, metric)  # forced: a failure is the user's to see
    if choice == "auto" and _triton_can_run(src) and kernel_health.check(src, dst, metric):
        try:
            return _run_triton(src, dst, metric)
        except Exception as exc:  # a launch that fails at another size: fall back for good
            kernel_health.fail((str(src.device), src.dtype, metric), f"it failed: {type(exc).__name__}: {exc}")
    return nearest_dst_chunked(src, dst, metric)


@_nearest_dst_op.register_fake
def _(src: Tensor, dst: Tensor, metric: str = "l2", match_kernel: str = "auto") -> tuple[Tensor, Tensor]:
    check_inputs(src, dst, metric)
    out_shape = (*src.shape[:-1],)
    return (
        src.new_empty(out_shape, dtype=torch.float32),
        src.new_empty(out_shape, dtype=torch.int64),
    )


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 - torch.library signature
    src, dst, metric, _kernel = inputs
    ctx.metric = metric
    ctx.save_for_backward(src, dst, output[1])


def _backward(ctx, grad_dist: Tensor | None, _grad_idx: Tensor | None):  # noqa: ANN001
    # The gradient of the selected branch of the min (like torch.min's): only the matched
    # pair (s_i, d_idx[i]) depends on the inputs. Matching itself needs no gradient; this
    # keeps graphs that happen to require grad (a model not under no_grad) working.
    src, dst, idx = ctx.saved_tensors
    if grad_dist is None:
        return None, None, None, None
    s, d = src.float(), dst.float()
    gather = idx.unsqueeze(-1).expand(*idx.shape, d.shape[-1])
    dj = torch.gather(d, -2, gather)
    go = grad_dist.float().unsqueeze(-1)
    if ctx.metric == "l2":
        gs = 2.0 * go * (s - dj)
        gdj = -gs
    else:
        # dist = 1 - u.v with u = s / max(|s|, eps), v = d / max(|d|, eps).
        ns, nj = s.norm(dim=-1, keepdim=True), dj.norm(dim=-1, keepdim=True)
        cs, cj = ns.clamp_min(NORM_EPS), nj.clamp_min(NORM_EPS)
        u, v = s / cs, dj / cj
        cos = (u * v).sum(-1, keepdim=True)
        gs = -go * (v - (ns > NORM_EPS) * cos * u) / cs
        gdj = -go * (u - (nj > NORM_EPS) * cos * v) / cj
    gd = torch.zeros_like(d).scatter_add_(-2, gather, gdj)
    return gs.to(src.dtype), gd.to(dst.dtype), None, None


_nearest_dst_op.register_autograd(_backward, setup_context=_setup_context)


def nearest_dst(src: Tensor, dst: Tensor, metric: str = "l2", kernel: str = "auto") -> tuple[Tensor, Tensor]:
    """For each src row, the distance to and the index of its nearest dst row.

    Args:
        src: ``(..., Ns, D)`` floating point (fp32, bf16, fp16, ...).
        dst: ``(..., Nd, D)`` with the same leading dims and ``D`` as ``src``.
        metric: ``"l2"`` (squared L2) or ``"cosine"`` (``1 - cos``); see the module docstring.
        kernel: ``"auto"``, ``"triton"`` or ``"chunked"`` (see the module docstring).

    Returns:
        ``(dist, idx)``: float32 ``(..., Ns)`` and int64 ``(..., Ns)``; ties go to the lowest
        dst index. ``dist`` carries the gradient of the selected pair (like ``torch.min``).
    """
    return torch.ops.asymrnr.nearest_dst(src, dst, metric, kernel)
