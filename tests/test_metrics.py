"""The hand-written clip metrics agree with scikit-image's, the implementation users trust."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asymrnr_fx.small.metrics import psnr, ssim

skimage_metrics = pytest.importorskip("skimage.metrics")


@settings(max_examples=20, deadline=None)
@given(frames=st.integers(1, 3), channels=st.integers(1, 3), size=st.sampled_from([(11, 11), (16, 24), (32, 32)]),
       noise=st.sampled_from([0.01, 0.1, 0.5]), seed=st.integers(0, 2**16))
def test_psnr_and_ssim_match_scikit_image(frames, channels, size, noise, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    reference = torch.rand(2, frames, channels, *size, generator=gen) * 2 - 1
    clip = (reference + noise * torch.randn(reference.shape, generator=gen)).clamp(-1, 1)
    ours_psnr, ours_ssim = psnr(clip, reference), ssim(clip, reference)
    for i in range(2):
        a, b = clip[i].double().numpy(), reference[i].double().numpy()
        want_psnr = skimage_metrics.peak_signal_noise_ratio(b, a, data_range=2.0)
        # Wang et al. 2004 as scikit-image implements it: Gaussian window, sigma 1.5, the
        # population covariance, valid windows; per frame and channel, then averaged.
        want_ssim = np.mean([
            skimage_metrics.structural_similarity(b[f, c], a[f, c], data_range=2.0, gaussian_weights=True,
                                                  sigma=1.5, use_sample_covariance=False)
            for f in range(frames) for c in range(channels)])
        assert float(ours_psnr[i]) == pytest.approx(want_psnr, rel=1e-5)
        assert float(ours_ssim[i]) == pytest.approx(want_ssim, abs=1e-5)
