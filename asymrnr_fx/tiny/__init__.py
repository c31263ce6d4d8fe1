"""Tiny random-weight configs of the real diffusers video transformers, by family.

Each module holds ``CONFIGS``: name -> ``(batch, seed) -> TinyModel``; the registry that joins
them is :data:`asymrnr_fx.tiny_models.TINY_MODELS`.
"""
