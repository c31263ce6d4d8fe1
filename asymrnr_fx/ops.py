"""The tensor ops of AsymRnR: partition, match, reduce, attend, restore.

Everything here is plain PyTorch, so a rewritten graph that calls these functions traces
through AOTAutograd and Inductor like any other code; the kept count K is the size of an index
tensor, which the compiled rewrite treats as a dynamic size (one graph for every ratio). Index
conventions:

* ``keep``    (B, H, K) int64: which video tokens survive, per head (dst tokens first).
* ``restore`` (B, H, N) int64: for every video token, the row of the reduced sequence that
  represents it (its own row if kept, its matched dst's row if removed).

Reduction is a gather with ``keep`` (``drop`` merge) or a scatter-add mean over ``restore``
(``mean`` merge); restoration is a gather with ``restore``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "Partition",
    "partition",
    "partition_seed",
    "site_partition",
    "dst_count",
    "kept_count",
    "match",
    "static_match",
    "reduce_tokens",
    "reduced_sdpa",
]


@dataclass(frozen=True)
class Partition:
    """dst/src split of the video tokens of a (T, H, W) grid, flattened row-major.

    ``dst_idx`` holds one token per complete ``stride`` chunk, ``src_idx`` every other token
    (grid remainders included); both ascending.
    """

    dst_idx: torch.Tensor
    src_idx: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return self.dst_idx.numel() + self.src_idx.numel()


def _chunk_counts(grid: tuple[int, int, int], stride: tuple[int, int, int]) -> tuple[int, ...]:
    return tuple(g // s for g, s in zip(grid, _clamped(grid, stride), strict=True))


CHUNK_OFFSETS = ("start", "random")


def partition(
    grid: tuple[int, int, int],
    stride: tuple[int, int, int],
    seed: int = 0,
    device: torch.device | str | None = None,
    chunk_offset: str = "start",
) -> Partition:
    """Cut ``grid`` into chunks of ``stride``; draw one dst per chunk from a seeded generator.

    Where ``stride`` does not divide the grid, the complete chunks cover a region and the
    leftover tokens around it are src. ``chunk_offset="start"`` puts the region at the grid's
    origin (the leftover is always the last frames, rows and columns); ``"random"`` shifts it
    along each such axis by a draw in ``[0, leftover)`` after the dst draws, as the reference
    implementation does, so the leftover moves from draw to draw. A stride larger than the grid
    along an axis is clamped to the grid (so there is always at least one dst). The draw uses a
    CPU generator, so a seed gives the same partition on every device; the rest is a few
    vectorized ops on ``device``.
    """
    if chunk_offset not in CHUNK_OFFSETS:
        raise ValueError(f"chunk_offset={chunk_offset!r} is invalid: choose one of {CHUNK_OFFSETS}")
    t, h, w = grid
    st, sh, sw = _clamped(grid, stride)
    nt, nh, nw = _chunk_counts(grid, stride)
    generator = torch.Generator().manual_seed(int(seed))
    offsets = torch.randint(st * sh * sw, (nt * nh * nw,), generator=generator).to(device)
    shift = [0, 0, 0]
    if chunk_offset == "random":
        for axis, (g, s) in enumerate(zip(grid, (st, sh, sw), strict=True)):
            if g % s:
                shift[axis] = int(torch.randint(g % s, (1,), generator=generator))
    chunk = torch.arange(nt * nh * nw, device=device)
    dt = (chunk // (nh * nw)) * st + offsets // (sh * sw) + shift[0]
    dh = (chunk // nw % nh) * sh + offsets // sw % sh + shift[1]
    dw = (chunk % nw) * sw + offsets % sw + shift[2]
    dst_idx = torch.sort((dt * h + dh) * w + dw).values
    is_src = torch.ones(t * h * w, dtype=torch.bool, device=device)
    is_src[dst_idx] = False
    src_idx = torch.nonzero_static(is_src, size=t * h * w - dst_idx.numel()).squeeze(1)
    return Partition(dst_idx, src_idx)


def partition_seed(seed: int, site: int, component: str, window: int) -> int:
    """The seed of the dst draw for one (site, component, refresh window) of a generation.

    A stable hash (the same in every process), so a run can be recomputed exactly.
    """
    text = f"asymrnr/{int(seed)}/{int(site)}/{component}/{int(window)}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def site_partition(
    grid: tuple[int, int, int],
    stride: tuple[int, int, int],
    *,
    seed: int,
    site: int,
    component: str,
    window: int,
    device: torch.device | str | None = None,
    chunk_offset: str = "start",
) -> Partition:
    """The dst/src split a rewritten site used: attention site ``site`` (its layer index, the
    order in which the sites first run), ``component`` (``"q"``, ``"kv"`` or ``"shared"``) and refresh window ``window``
    (``step // cache_interval``), for the config's ``seed``.

    The reference implementation draws a fresh random dst per block, per component and per
    cache window; this is that draw, made reproducible. With
    ``AsymRnRConfig(resample_partition=False)`` every site uses ``partition(grid, stride, seed)``.
    """
    return partition(grid, stride, partition_seed(seed, site, component, window), device, chunk_offset)


def _clamped(grid: tuple[int, int, int], stride: tuple[int, int, int]) -> tuple[int, ...]:
    return tuple(min(s, g) for s, g in zip(stride, grid, strict=True))


def dst_count(grid: tuple[int, int, int], stride: tuple[int, int, int]) -> int:
    """Number of dst tokens :func:`partition` draws: one per complete chunk."""
    return math.prod(g // s for g, s in zip(grid, _clamped(grid, stride), strict=True))


def kept_count(num_tokens: int, ratio: float, num_dst: int) -> int:
    """Tokens kept at ``ratio``: ``int(N * (1 - r))``, never fewer than the dst tokens."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio={ratio!r} is out of range [0, 1)")
    return min(num_tokens, max(int(num_tokens * (1.0 - ratio)), num_dst))


def _indices_from_order(
    order: torch.Tensor,
    nearest: torch.Tensor,
    part: Partition,
    num_keep: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """keep/restore from src tokens sorted most-redundant first and their nearest dst."""
    lead = order.shape[:-1]
    num_dst, num_src = part.dst_idx.numel(), part.src_idx.numel()
    num_remove = part.num_tokens - num_keep
    retained = order[..., num_remove:]
    keep = torch.cat([part.dst_idx.expand(*lead, num_dst), part.src_idx[retained]], dim=-1)
    ranks = torch.arange(num_src, device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter(-1, order, ranks)
    src_row = torch.where(rank < num_remove, nearest, rank - num_remove + num_dst)
    rows = torch.cat([torch.arange(num_dst, device=order.device).expand(*lead, num_dst), src_row], -1)
    # rows is laid out as [dst tokens..., src tokens...]; put it back in token order.
    token_of_row = torch.cat([part.dst_idx, part.src_idx])
    restore = torch.empty_like(rows).scatter(-1, token_of_row.expand_as(rows), rows)
    return keep, restore


def match(
    x: torch.Tensor,
    part: Partition,
    num_keep: int,
    metric: str = "l2",
    kernel: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarity matching of AsymRnR on ``x`` (B, H, N, D), per batch item and head.

    Every src finds its nearest dst; the ``N - num_keep`` src tokens closest to their dst are
    removed (ties: lower src position first). Returns ``(keep, restore)``.
    """
    from .kernels.nearest import nearest_dst

    dist, nearest = nearest_dst(x[:, :, part.src_idx], x[:, :, part.dst_idx], metric, kernel)
    order = torch.argsort(dist, dim=-1, stable=True)
    return _indices_from_order(order, nearest, part, num_keep)


def _src_chunk_order(part: Partition, grid: tuple[int, int, int],
                     stride: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per src token: the position in ``dst_idx`` of its own chunk's dst (the spatially
    nearest dst) and its rank among its chunk's src tokens."""
    t, h, w = grid
    st, sh, sw = _clamped(grid, stride)
    nt, nh, nw = _chunk_counts(grid, stride)

    def chunk_of(token: torch.Tensor) -> torch.Tensor:
        tt, hh, ww = token // (h * w), token // w % h, token % w
        ct = (tt // st).clamp(max=nt - 1)
        ch = (hh // sh).clamp(max=nh - 1)
        cw = (ww // sw).clamp(max=nw - 1)
        return (ct * nh + ch) * nw + cw

    rank_of_chunk = torch.empty(nt * nh * nw, dtype=torch.long, device=part.dst_idx.device)
    rank_of_chunk[chunk_of(part.dst_idx)] = torch.arange(part.dst_idx.numel(), device=part.dst_idx.device)
    home = rank_of_chunk[chunk_of(part.src_idx)]
    order = torch.argsort(home, stable=True)
    counts = torch.bincount(home, minlength=part.dst_idx.numel())
    starts = torch.cumsum(counts, 0) - counts
    rank_sorted = torch.arange(home.numel(), device=home.device) - starts[home[order]]
    rank = torch.empty_like(rank_sorted)
    rank[order] = rank_sorted
    return home, rank


def static_match(part: Partition, grid: tuple[int, int, int], stride: tuple[int, int, int],
                 num_keep: int, mode: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Data-independent ``(keep, restore)`` of shape (K,) and (N,): the ablations and the bound.

    ``strided`` removes src tokens evenly across chunks (the first src of every chunk, then
    the second, ...); ``random`` removes a seeded random subset. Removed tokens are
    represented by their own chunk's dst.
    """
    home, rank = _src_chunk_order(part, grid, stride)
    num_src = part.src_idx.numel()
    if mode == "strided":
        key = rank.double() * (num_src + 1) + home.double()
        order = torch.argsort(key, stable=True)
    elif mode == "random":
        generator = torch.Generator().manual_seed(seed + 1)
        order = torch.randperm(num_src, generator=generator).to(part.src_idx.device)
    else:
        raise ValueError(f"match_mode={mode!r} has no static form; use 'strided' or 'random'")
    return _indices_from_order(order, home, part, num_keep)


def reduce_tokens(x: torch.Tensor, keep: torch.Tensor, restore: torch.Tensor, merge: str) -> torch.Tensor:
    """Reduce video tokens ``x`` (B, H, N, D) to (B, H, K, D).

    ``drop``: the kept tokens as they are. ``mean``: each kept row is the mean of all tokens it
    represents (scatter-add plus counts in fp32; Inductor has no fused scatter-mean).
    """
    keep = keep.expand(*x.shape[:2], keep.shape[-1])
    if merge == "drop":
        return x.gather(2, keep.unsqueeze(-1).expand(*keep.shape, x.shape[-1]))
    restore = restore.expand(*x.shape[:3])
    rows = restore.unsqueeze(-1).expand(*restore.shape, x.shape[-1])
    sums = x.new_zeros(*x.shape[:2], keep.shape[-1], x.shape[-1], dtype=torch.float32)
    sums = sums.scatter_add(2, rows, x.float())
    counts = x.new_zeros(*x.shape[:2], keep.shape[-1], dtype=torch.float32)
    counts = counts.scatter_add(2, restore, torch.ones_like(restore, dtype=torch.float32))
    return (sums / counts.unsqueeze(-1)).to(x.dtype)


def _cut_sequence(
    x: torch.Tensor, dim: int, video_start: int, video_len: int, video: torch.Tensor
) -> torch.Tensor:
    """Replace the video segment of ``x`` along ``dim`` by ``video`` (text kept as it is)."""
    before = x.narrow(dim, 0, video_start)
    after = x.narrow(dim, video_start + video_len, x.shape[dim] - video_start - video_len)
    return torch.cat([before, video, after], dim=dim)


def _kept_positions(keep: torch.Tensor, video_start: int, video_len: int, seq_len: int) -> torch.Tensor:
    """Positions in the full sequence that survive: text as is, video by ``keep`` (B, H, K)."""
    lead = keep.shape[:-1]
    device = keep.device
    before = torch.arange(video_start, device=device).expand(*lead, video_start)
    after = torch.arange(video_start + video_len, seq_len, device=device)
    return torch.cat([before, keep + video_start, after.expand(*lead, after.numel())], dim=-1)


def _restored_rows(restore: torch.Tensor, video_start: int, video_len: int, seq_len: int,
                   num_keep: int) -> torch.Tensor:
    """For every position of the full sequence, its row in the reduced one: text rows as
    they are (shifted after the video by the removed tokens), video rows by ``restore``."""
    lead = restore.shape[:-1]
    device = restore.device
    before = torch.arange(video_start, device=device).expand(*lead, video_start)
    after_len = seq_len - video_start - video_len
    after = torch.arange(after_len, device=device) + (video_start + num_keep)
    return torch.cat([before, restore + video_start, after.expand(*lead, after_len)], dim=-1)


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` (B, H, S, D) at ``index`` (B, H, S'): one gather."""
    return x.gather(2, index.unsqueeze(-1).expand(*index.shape, x.shape[-1]))


def _reduce_mask(mask: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """Gather mask rows (dim=-2) or columns (dim=-1) with per-(batch, head) ``index``."""
    if mask.shape[dim] == 1:  # broadcast along that axis: nothing to cut
        return mask
    b, h = index.shape[:2]
    mask = mask.expand(b, h, *mask.shape[2:])
    if dim == -1:
        return mask.gather(-1, index.unsqueeze(-2).expand(b, h, mask.shape[-2], index.shape[-1]))
    return mask.gather(-2, index.unsqueeze(-1).expand(b, h, index.shape[-1], mask.shape[-1]))


def _reduce_sequence(x: torch.Tensor, keep: torch.Tensor, restore: torch.Tensor, video_start: int,
                     video_len: int, merge: str) -> torch.Tensor:
    """``x`` (B, H, S, D) with its video tokens reduced by ``keep``/``restore``, text kept."""
    if merge == "drop":  # one gather over the whole sequence (text positions as they are)
        return _gather_rows(x, _kept_positions(keep, video_start, video_len, x.shape[2]))
    video = reduce_tokens(x[:, :, video_start:video_start + video_len], keep, restore, merge)
    return _cut_sequence(x, 2, video_start, video_len, video)


def reduced_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    *,
    video_start: int,
    video_len: int,
    q_keep: torch.Tensor | None = None,
    q_restore: torch.Tensor | None = None,
    kv_keep: torch.Tensor | None = None,
    kv_restore: torch.Tensor | None = None,
    merge: str = "drop",
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` on reduced video tokens, restored to full length.

    Tensors are (B, H, S, D) with the video tokens at ``[video_start, video_start + video_len)``
    and text around them. Text tokens are never reduced; a key mask follows the kept tokens.
    """
    seq_q, seq_k = query.shape[-2], key.shape[-2]
    if kv_keep is not None:
        kv_keep = kv_keep.expand(*key.shape[:2], kv_keep.shape[-1])
        key = _reduce_sequence(key, kv_keep, kv_restore, video_start, video_len, merge)
        value = _reduce_sequence(value, kv_keep, kv_restore, video_start, video_len, merge)
    if q_keep is not None:
        q_keep = q_keep.expand(*query.shape[:2], q_keep.shape[-1])
        query = _reduce_sequence(query, q_keep, q_restore, video_start, video_len, merge)
    if attn_mask is not None:
        while attn_mask.dim() < 4:
            attn_mask = attn_mask.unsqueeze(0)
        if kv_keep is not None:
            attn_mask = _reduce_mask(attn_mask, -1, _kept_positions(kv_keep, video_start, video_len, seq_k))
        if q_keep is not None:
            attn_mask = _reduce_mask(attn_mask, -2, _kept_positions(q_keep, video_start, video_len, seq_q))
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    if q_keep is None:
        return out
    rows = _restored_rows(q_restore.expand(*out.shape[:2], video_len), video_start, video_len, seq_q,
                          q_keep.shape[-1])
    return _gather_rows(out, rows)


# ---- the entry point rewritten graphs call (one opaque node per site and component) -------


# cudagraph_unsafe: what it does depends on a flag read at run time, so a captured CUDA graph
# would replay one branch forever; Inductor keeps it out of CUDA graphs. No argument may be
# named `kernel`: Inductor's fallback lowering passes defaulted arguments by name to
# FallbackKernel.create(kernel, ...), which then fails with "multiple values for 'kernel'".
@torch.library.custom_op("asymrnr::select_tokens", mutates_args=(), tags=(torch.Tag.cudagraph_unsafe,))
def select_tokens(
    x: torch.Tensor,
    dst_idx: torch.Tensor,
    src_idx: torch.Tensor,
    keep: torch.Tensor,
    restore: torch.Tensor,
    refresh: torch.Tensor,
    slot: int,
    video_start: int,
    metric: str,
    match_kernel: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep, restore)`` for the video tokens of ``x`` (B, H, S, D): matched afresh, or the
    cached ones passed in.

    ``keep`` (B, H, K) and ``restore`` (B, H, N) are the cached indices; their shapes carry
    the kept count K and the video length N, so one compiled graph serves every K (the graph
    may treat K as a dynamic size). ``refresh[slot]`` (a CPU bool tensor) says whether to
    match on ``x`` with the partition ``(dst_idx, src_idx)``; otherwise the cached indices are
    returned (copied: a custom op may not return its inputs). K == N keeps every token in
    order, so nothing is matched.
    """
    if not bool(refresh[slot]):
        return keep.clone(), restore.clone()
    num_keep, video_len = keep.shape[-1], restore.shape[-1]
    if num_keep >= video_len:
        index = torch.arange(video_len, device=keep.device).expand(restore.shape)
        return index.contiguous(), index.contiguous()
    video = x[:, :, video_start:video_start + video_len]
    return match(video, Partition(dst_idx, src_idx), num_keep, metric, match_kernel)


@select_tokens.register_fake
def _(x, dst_idx, src_idx, keep, restore, refresh, slot, video_start, metric, match_kernel="auto"):  # noqa: ANN001, ANN202
    return torch.empty_like(keep), torch.empty_like(restore)
