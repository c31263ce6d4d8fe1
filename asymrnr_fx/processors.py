"""Graph-friendly attention processors for models whose stock processor Dynamo cannot capture.

diffusers' ``MochiAttnProcessor2_0`` selects each sample's valid prompt tokens with
``torch.nonzero`` inside a per-sample loop. Dynamo breaks the graph there and runs the joint
attention eagerly, so the pass never sees it. :class:`MochiJointAttnProcessor` computes the
same result with one ``scaled_dot_product_attention`` over the whole batch and a key mask,
which Dynamo captures and the pass rewrites (text is never reduced: it follows the video).

:func:`prepare` installs the graph-friendly processors on a transformer (``apply(pipe)`` does
it); :func:`unprepare` puts the stock ones back. A backend that meets an unprepared model
says so once (:func:`unprepared_warning`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["MochiJointAttnProcessor", "ProcessorFix", "FIXES", "prepare", "unprepare", "unprepared_warning"]

_STOCK = "_asymrnr_stock_processor"  # attribute that remembers the replaced processor


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Mochi's interleaved rotary embedding, exactly as its processor computes it."""
    even, odd = x[..., 0::2].float(), x[..., 1::2].float()
    return torch.stack([(even * cos - odd * sin).to(x.dtype), (even * sin + odd * cos).to(x.dtype)], -1).flatten(-2)


def _compact_valid(text: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Valid rows first, in order, then zeros: where the stock processor's per-sample
    selection and padding put the prompt outputs (B, T, C)."""
    order = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)
    text = text.gather(1, order.unsqueeze(-1).expand_as(text))
    return torch.where(valid.gather(1, order).unsqueeze(-1), text, 0)


class MochiJointAttnProcessor:
    """Mochi's joint video + prompt attention as one SDPA call with a key mask.

    Equal to diffusers' ``MochiAttnProcessor2_0`` on every valid token: a query attends to the
    video and the sample's valid prompt tokens (padded prompt keys are masked instead of cut
    out), and the prompt outputs come back as the stock processor returns them (valid ones
    first, in order, padded positions zero before ``to_add_out``).
    """

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor,
                 image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        def split_heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(2, (attn.heads, -1))

        query, key, value = (split_heads(p(hidden_states)) for p in (attn.to_q, attn.to_k, attn.to_v))
        text_q, text_k, text_v = (split_heads(p(encoder_hidden_states))
                                  for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if attn.norm_added_q is not None:
            text_q = attn.norm_added_q(text_q)
        if attn.norm_added_k is not None:
            text_k = attn.norm_added_k(text_k)
        if image_rotary_emb is not None:
            query, key = _rotate(query, *image_rotary_emb), _rotate(key, *image_rotary_emb)

        video_len = query.shape[1]
        # Video first, prompt after it: the order of the stock processor.
        q, k, v = (torch.cat([a, b], 1).transpose(1, 2) for a, b in ((query, text_q), (key, text_k), (value, text_v)))
        valid = attention_mask.bool()
        keys = torch.cat([valid.new_ones(valid.shape[0], video_len), valid], 1)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).flatten(2, 3)
        hidden_states, encoder_hidden_states = out.split_with_sizes((video_len, out.shape[1] - video_len), 1)
        encoder_hidden_states = _compact_valid(encoder_hidden_states, valid)

        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if hasattr(attn, "to_add_out"):
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


@dataclass(frozen=True)
class ProcessorFix:
    """A stock processor that breaks the graph, and the graph-friendly one that replaces it."""

    model: str  # the transformer class
    marker: str  # a module class inside its blocks: how a captured graph shows the model
    attention: str  # the attention module class the processor serves
    stock: str  # the stock processor class
    replacement: Callable[[], Any]
    why: str  # what breaks the graph


FIXES: tuple[ProcessorFix, ...] = (
    # A graph's root module is not in its module stack: a block compiled alone (or a fragment
    # between graph breaks) shows the block's norm, not the block.
    ProcessorFix("MochiTransformer3DModel", "MochiRMSNormZero", "MochiAttention", "MochiAttnProcessor2_0",
                 MochiJointAttnProcessor, "selects each sample's valid prompt tokens with nonzero in a loop"),
)


def _fix_for(module: torch.nn.Module) -> ProcessorFix | None:
    processor = getattr(module, "processor", None)
    name = type(module).__name__
    return next((f for f in FIXES if f.attention == name and type(processor).__name__ == f.stock), None)


def prepare(transformer: torch.nn.Module) -> int:
    """Install the graph-friendly processors; returns how many attention modules changed.

    Call it before ``torch.compile(transformer, backend="asymrnr")`` on a model listed in
    :data:`FIXES` (``asymrnr_fx.apply`` does it). Idempotent.
    """
    changed = 0
    for module in transformer.modules():
        fix = _fix_for(module)
        if fix is not None:
            setattr(module, _STOCK, module.processor)
            module.processor = fix.replacement()
            changed += 1
    return changed


def unprepare(transformer: torch.nn.Module) -> int:
    """Put back the stock processors :func:`prepare` replaced; returns how many."""
    restored = 0
    for module in transformer.modules():
        stock = vars(module).pop(_STOCK, None)
        if stock is not None:
            module.processor = stock
            restored += 1
    return restored


def unprepared_warning(graph_modules: set[str], sdpa_modules: Iterable[set[str]]) -> str | None:
    """The one line to log for a graph of a model whose stock processor breaks the graph.

    ``graph_modules``: the module classes a captured graph was traced from; ``sdpa_modules``:
    those around each of its attention calls. A graph that holds part of a listed model's
    blocks but no attention call inside its attention module comes from an unprepared model.
    """
    sdpa_modules = list(sdpa_modules)
    for fix in FIXES:
        if fix.marker in graph_modules and not any(fix.attention in m for m in sdpa_modules):
            return (f"asymrnr: {fix.model}: diffusers' {fix.stock} {fix.why}, which breaks the graph, "
                    "so its joint attention runs eagerly and is not rewritten; call "
                    "asymrnr_fx.prepare(transformer) before torch.compile (asymrnr_fx.apply(pipe) does it)")
    return None
