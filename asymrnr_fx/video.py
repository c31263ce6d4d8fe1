"""Writing generated frames as a video file, whole or not at all."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_video"]


def write_video(frames: Sequence[Any], path: str | Path, fps: int = 8) -> Path:
    """Write PIL images or HWC arrays (uint8, or floats in [0, 1]) as MP4 (with imageio) or GIF
    (with pillow); returns the path written (a ``.gif`` beside ``path`` when MP4 cannot be
    written)."""
    import numpy as np
    from PIL import Image

    from .files import atomic_path

    out = Path(path)
    arrays = [np.asarray(f) for f in frames]
    if arrays and arrays[0].dtype != np.uint8:  # float frames in [0, 1]
        arrays = [(np.clip(a, 0, 1) * 255).round().astype(np.uint8) for a in arrays]
    if out.suffix.lower() != ".gif":
        try:
            import imageio.v2 as imageio

            with atomic_path(out) as temporary:
                imageio.mimsave(temporary, arrays, fps=fps)
            return out
        except (ImportError, ValueError, RuntimeError) as exc:
            gif = out.with_suffix(".gif")
            print(f"note: cannot write {out.suffix} ({' '.join(str(exc).split())}); writing {gif} "
                  "instead (pip install imageio imageio-ffmpeg for MP4)", file=sys.stderr)
            out = gif
    images = [Image.fromarray(a) for a in arrays]
    with atomic_path(out) as temporary:
        images[0].save(temporary, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return out
