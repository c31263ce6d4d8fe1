"""Context-parallel plans the package ships for model families whose diffusers class has none.

diffusers 0.42 declares ``_cp_plan`` for Wan and LTX-Video (among others) but not for CogVideoX
or HunyuanVideo. A plan says where the token sequence is split across processes and where it
is gathered again; :func:`asymrnr_fx.enable_context_parallel` (and ``apply(pipe,
parallel=...)``) passes it to ``transformer.enable_parallelism(config, cp_plan=...)``.

Both plans split the *token* sequence after the patch embedding (so the patch embedding, and
with it the video grid, stays whole in every process) and gather it at ``proj_out``:

* **CogVideoX**: its attention processor calls ``scaled_dot_product_attention`` itself, so
  under a plan alone every process would attend over its own shard only. The blocks get
  :class:`CogVideoXContextParallelProcessor`, the same computation through diffusers'
  ``dispatch_attention_fn`` (which runs the Ulysses exchange).
* **HunyuanVideo**: the model builds one key mask over ``[video, text]`` for the whole
  sequence (padded prompt tokens masked out). :class:`HunyuanVideoContextParallelProcessor`
  hands each process the mask of its own tokens (its shares of the video and of the text,
  cut the way diffusers cuts the tokens), which diffusers' Ulysses then gathers in the order
  of the gathered tokens. The token refiner runs before the split, on the whole prompt.
  Image-to-video (``image_condition_type="token_replace"``) is not covered: its first-frame
  token count is global.

Mochi has no plan: its attention selects each sample's text tokens with a data-dependent
``nonzero`` (no context-parallel path in diffusers, and no rewritable site either).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks.context_parallel import EquipartitionSharder
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

__all__ = ["ShippedPlan", "SHIPPED_PLANS", "CogVideoXContextParallelProcessor",
           "HunyuanVideoContextParallelProcessor"]


class CogVideoXContextParallelProcessor:
    """CogVideoX's joint text+video attention through ``dispatch_attention_fn``: the same
    computation as diffusers' ``CogVideoXAttnProcessor2_0``, in the (B, S, H, D) layout
    diffusers' context-parallel attention takes."""

    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if attention_mask is not None:
            raise ValueError("CogVideoXContextParallelProcessor takes no attention mask (CogVideoX passes none)")
        text_len = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        query, key, value = (proj(hidden_states).unflatten(2, (attn.heads, -1))
                             for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:  # on the video tokens only, as the original does
            from diffusers.models.embeddings import apply_rotary_emb

            def rotate(x: torch.Tensor) -> torch.Tensor:
                video = apply_rotary_emb(x[:, text_len:], image_rotary_emb, sequence_dim=1)
                return torch.cat([x[:, :text_len], video], dim=1)

            query = rotate(query)
            if not attn.is_cross_attention:
                key = rotate(key)
        out = dispatch_attention_fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend, parallel_config=self._parallel_config)
        out = attn.to_out[1](attn.to_out[0](out.flatten(2, 3).type_as(query)))
        encoder_hidden_states, hidden_states = out.split([text_len, out.size(1) - text_len], dim=1)
        return hidden_states, encoder_hidden_states


class HunyuanVideoContextParallelProcessor(HunyuanVideoAttnProcessor2_0):
    """diffusers' HunyuanVideo attention, given the key mask of this process's own tokens.

    The model's mask covers the whole ``[video, text]`` sequence; under context parallelism a
    process holds share r of the video followed by share r of the text, and diffusers' Ulysses
    gathers a *local* mask in that order. Without this the padded-text mask of a whole
    sequence would be laid over the gathered, interleaved tokens.
    """

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb: Any = None) -> Any:
        if attention_mask is not None and encoder_hidden_states is not None and self._parallel_config is not None:
            attention_mask = self._local_mask(attention_mask, hidden_states.shape[1])
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

    def _local_mask(self, mask: torch.Tensor, local_video: int) -> torch.Tensor:
        mesh = self._parallel_config.context_parallel_config._flattened_mesh
        video = local_video * mesh.size()
        parts = (mask[..., :video], mask[..., video:])
        return torch.cat([EquipartitionSharder.shard(p, p.dim() - 1, mesh) for p in parts], dim=-1)


def _cogvideox_plan() -> dict[str, Any]:
    return {
        "transformer_blocks.0": {
            "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3),
            "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3),
        },
        # Every block gets the whole RoPE table from the model (None without RoPE).
        "transformer_blocks.*": {
            "image_rotary_emb": [ContextParallelInput(split_dim=0, expected_dims=2)] * 2,
        },
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


def _hunyuanvideo_plan() -> dict[str, Any]:
    return {
        "rope": {
            0: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
            1: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
        },
        "transformer_blocks.0": {
            "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3),
            "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3),
        },
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


def _hunyuan_unsupported(model: Any) -> str | None:
    if getattr(model.config, "image_condition_type", None) == "token_replace":
        return "HunyuanVideo image-to-video (token_replace) counts first-frame tokens globally"
    return None


@dataclass(frozen=True)
class ShippedPlan:
    """A context-parallel plan for one model family, and what it needs besides the plan."""

    plan: Callable[[], dict[str, Any]]  # a fresh diffusers cp_plan
    processor: type | None = None  # attention processor for `processor_of` modules, if needed
    processor_of: tuple[str, ...] = ()  # module name prefixes whose attention gets it
    unsupported: Callable[[Any], str | None] = lambda model: None  # why a config is not covered


SHIPPED_PLANS: dict[str, ShippedPlan] = {
    "cogvideox": ShippedPlan(_cogvideox_plan, CogVideoXContextParallelProcessor, ("transformer_blocks.",)),
    "hunyuanvideo": ShippedPlan(_hunyuanvideo_plan, HunyuanVideoContextParallelProcessor,
                                ("transformer_blocks.", "single_transformer_blocks."), _hunyuan_unsupported),
}
