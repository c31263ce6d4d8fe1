"""Matching kernels: the ``asymrnr::nearest_dst`` op (chunked PyTorch, fused Triton on CUDA)."""
