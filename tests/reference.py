"""An independent, deliberately naive reference of AsymRnR attention (no import of the pass).

Loops over batch and heads, float64 throughout. Given the dst/src partition, it matches,
reduces, attends and restores exactly as the paper describes.
"""

from __future__ import annotations

import hashlib

import torch


def _nearest(x: torch.Tensor, dst: list[int], src: list[int], metric: str) -> tuple[list[float], list[int]]:
    dists, nearest = [], []
    for s in src:
        best, best_j = None, -1
        for j, d in enumerate(dst):
            if metric == "l2":
                value = float(((x[s] - x[d]) ** 2).sum())
            else:
                a, b = x[s] / x[s].norm().clamp_min(1e-6), x[d] / x[d].norm().clamp_min(1e-6)
                value = float(1 - (a * b).sum())
            if best is None or value < best:
                best, best_j = value, j
        dists.append(best)
        nearest.append(best_j)
    return dists, nearest


def reference_match(x: torch.Tensor, dst: list[int], src: list[int], num_keep: int, metric: str):
    """For one head's tokens x (N, D): kept token list and each token's representative."""
    dists, nearest = _nearest(x, dst, src, metric)
    num_remove = len(dst) + len(src) - num_keep
    order = sorted(range(len(src)), key=lambda i: (dists[i], i))
    removed = set(order[:num_remove])
    kept = list(dst) + [src[i] for i in order[num_remove:]]
    representative = {t: t for t in kept}
    for i in removed:
        representative[src[i]] = dst[nearest[i]]
    return kept, representative


def _reduce(x: torch.Tensor, kept: list[int], representative: dict[int, int], merge: str) -> torch.Tensor:
    if merge == "drop":
        return x[kept]
    rows = []
    for t in kept:
        members = [m for m, r in representative.items() if r == t]
        rows.append(x[members].mean(0))
    return torch.stack(rows)


def reference_attention(q, k, v, mask, *, video_start, video_len, q_partition, kv_partition,
                        q_keep, kv_keep, metric="l2", merge="drop", match_on="v", scale=None,
                        matches=None):
    """AsymRnR attention for (B, H, S, D) tensors; ``*_keep`` None leaves that side whole.
    ``scale`` multiplies the scores (default ``1 / sqrt(D)``, as SDPA).

    ``q_partition`` and ``kv_partition`` are ``(dst, src)`` token lists: Q and K/V are
    partitioned separately. ``matches`` maps ``(component, b, h)`` to ``(kept, representative)``:
    entries present are reused (a matching cache hit), missing ones are computed and stored.
    """
    matches = {} if matches is None else matches
    q, k, v = q.double(), k.double(), v.double()
    batch, heads, seq, dim = q.shape
    scale = dim ** -0.5 if scale is None else scale
    out = torch.empty_like(q)
    text = [t for t in range(seq) if not video_start <= t < video_start + video_len]
    for b in range(batch):
        for h in range(heads):
            vid = slice(video_start, video_start + video_len)
            if kv_keep is not None:
                source = (v if match_on == "v" else k)[b, h, vid]
                if ("kv", b, h) not in matches:
                    matches[("kv", b, h)] = reference_match(source, *kv_partition, kv_keep, metric)
                kv_kept, kv_rep = matches[("kv", b, h)]
                k_video = _reduce(k[b, h, vid], kv_kept, kv_rep, merge)
                v_video = _reduce(v[b, h, vid], kv_kept, kv_rep, merge)
                k_cols = [t for t in text] + [video_start + t for t in kv_kept]
            else:
                k_video, v_video = k[b, h, vid], v[b, h, vid]
                k_cols = text + list(range(video_start, video_start + video_len))
            k_text, v_text = k[b, h, text], v[b, h, text]
            keys = torch.cat([k_text, k_video])
            values = torch.cat([v_text, v_video])
            if q_keep is not None:
                if ("q", b, h) not in matches:
                    matches[("q", b, h)] = reference_match(q[b, h, vid], *q_partition, q_keep, metric)
                q_kept, q_rep = matches[("q", b, h)]
                q_video = _reduce(q[b, h, vid], q_kept, q_rep, merge)
            else:
                q_kept = list(range(video_len))
                q_rep = {t: t for t in q_kept}
                q_video = q[b, h, vid]
            queries = torch.cat([q[b, h, text], q_video])
            q_rows = text + [video_start + t for t in q_kept]
            scores = queries @ keys.T * scale
            if mask is not None:
                m = mask.expand(batch, heads, seq, seq)[b, h][q_rows][:, k_cols]
                scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.double()
            # SDPA gives a query whose keys are all masked a zero output row.
            result = torch.softmax(scores, -1).nan_to_num(0.0) @ values
            row_of = {t: i for i, t in enumerate(q_rows)}
            for t in text:
                out[b, h, t] = result[row_of[t]]
            for t in range(video_len):
                out[b, h, video_start + t] = result[row_of[video_start + q_rep[t]]]
    return out


def reference_partition(grid, stride, seed, chunk_offset="start"):
    """The documented dst draw, by loops: chunks of ``stride`` (clamped to the grid) in
    row-major order, one uniformly drawn offset per complete chunk
    (``torch.randint(chunk_volume, (num_chunks,))`` from a CPU generator seeded with ``seed``);
    the token at that offset is the chunk's dst; every other token is src. With
    ``chunk_offset="random"`` the chunked region then moves, frame axis first, by one
    ``torch.randint(leftover, (1,))`` from the same generator along each axis the stride does
    not divide (the reference implementation's random left padding)."""
    t, h, w = grid
    st, sh, sw = (min(s, g) for s, g in zip(stride, grid, strict=True))
    nt, nh, nw = t // st, h // sh, w // sw
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.randint(st * sh * sw, (nt * nh * nw,), generator=generator)
    pad = {"t": 0, "h": 0, "w": 0}
    if chunk_offset == "random":
        for axis, size, step in (("t", t, st), ("h", h, sh), ("w", w, sw)):
            if size % step:
                pad[axis] = int(torch.randint(size % step, (1,), generator=generator))
    dst = []
    for ct in range(nt):
        for ch in range(nh):
            for cw in range(nw):
                offset = int(offsets[(ct * nh + ch) * nw + cw])
                ot, oh, ow = offset // (sh * sw), offset // sw % sh, offset % sw
                frame, row, col = pad["t"] + ct * st + ot, pad["h"] + ch * sh + oh, pad["w"] + cw * sw + ow
                dst.append((frame * h + row) * w + col)
    dst = sorted(dst)
    chosen = set(dst)
    return dst, [i for i in range(t * h * w) if i not in chosen]


def reference_site_seed(seed, site, component, window):
    """The documented seed of the dst draw of one (site, component, refresh window): the first
    8 bytes of blake2b("asymrnr/{seed}/{site}/{component}/{window}"), little endian, >> 1."""
    text = f"asymrnr/{seed}/{site}/{component}/{window}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def reference_kept(num_tokens, ratio, num_dst):
    """Tokens kept at ``ratio``: int(N * (1 - r)), never fewer than the dst tokens, at most N."""
    return min(num_tokens, max(int(num_tokens * (1.0 - ratio)), num_dst))

