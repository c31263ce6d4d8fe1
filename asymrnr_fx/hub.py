"""Finding and loading a diffusers pipeline without touching the network unless asked.

``load_pipeline("THUDM/CogVideoX-2b")`` loads from the local Hugging Face cache (or a folder);
``allow_download=True`` fetches what is missing. Every failure is a :class:`ModelUnavailable`
(a ``ValueError``) whose message names the fix.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["ModelUnavailable", "resolve_pretrained", "load_pipeline", "default_device"]

SMALL_MODEL_NAMES = ("small", "shapes-cogvideox")  # the shipped small model, not a Hub id


class ModelUnavailable(ValueError):
    """The model cannot be found or loaded here; the message says how to get it."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def resolve_pretrained(model: str, allow_download: bool = False) -> str:
    """A local folder for ``model`` (a path or a Hub id), without touching the network unless
    ``allow_download``."""
    if os.path.isdir(model):
        return model
    if os.path.exists(model) or model.startswith((".", "/", "~")):
        raise ModelUnavailable(f"model path {model!r} is not a folder with a diffusers pipeline")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return snapshot_download(model, local_files_only=True)
    except HFValidationError:
        raise ModelUnavailable(
            f"model {model!r} is neither a local folder nor a Hugging Face model id "
            f"(like 'THUDM/CogVideoX-2b'); use '{SMALL_MODEL_NAMES[0]}' for the shipped small model") from None
    except LocalEntryNotFoundError:
        if allow_download:
            try:
                return snapshot_download(model)
            except Exception as exc:  # any network or auth failure: one line, no retries
                raise ModelUnavailable(f"downloading model {model!r} failed: {_one_line(exc)}") from None
        raise ModelUnavailable(
            f"model {model!r} is not available locally: on a connected machine run "
            f"'hf download {model}' (older huggingface_hub: 'huggingface-cli download {model}') "
            "and copy the Hugging Face cache here, or pass a local folder, or allow the download "
            "(--download)") from None


def default_device(cpu: bool = False) -> tuple[str, Any]:
    """``(device, dtype)``: CUDA in bfloat16 when there is one (and ``cpu`` is False), else
    the CPU in float32."""
    import torch

    if not cpu and torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


def load_pipeline(model: str, *, allow_download: bool = False, device: str | None = None,
                  dtype: Any = None) -> Any:
    """A diffusers pipeline from a folder or a Hub id, on ``device`` in ``dtype`` (default:
    :func:`default_device`)."""
    # Resolve first: a missing model fails before the (slow) pipeline imports.
    folder = resolve_pretrained(model, allow_download)
    from diffusers import DiffusionPipeline

    if device is None or dtype is None:
        device, dtype = default_device()
    try:
        pipe = DiffusionPipeline.from_pretrained(folder, dtype=dtype, local_files_only=True)
    except Exception as exc:  # a broken or foreign folder fails in many ways: one line each
        if os.environ.get("ASYMRNR_DEBUG") == "1":
            raise
        raise ModelUnavailable(f"cannot load a diffusers pipeline from {model!r}: "
                               f"{type(exc).__name__}: {_one_line(exc)}") from None
    return pipe.to(device)
