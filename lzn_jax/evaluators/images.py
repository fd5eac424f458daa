"""Image conversion and PNG sample grids.

`to_uint8` is the conversion every evaluator applies before images leave the model's [-1, 1] range (FID
pipelines, grids), identical to the official one: rescale to [0, 255], clip, round half to even.
`make_grid` lays images out as torchvision's `make_grid` does (2-pixel black border), so grids look like the
official ones; a per-class grid is `save_grid` of class-major ordered images with `nrow` samples per class.
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image

from lzn_jax import files


def to_uint8(images) -> np.ndarray:
    """Images in [-1, 1] (any shape, any float array) -> uint8 in [0, 255], clipped and rounded half to even."""
    x = (np.asarray(images, dtype=np.float32) + 1.0) / 2.0
    return np.around(np.clip(x * 255.0, 0.0, 255.0)).astype(np.uint8)


def as_rgb(images: np.ndarray) -> np.ndarray:
    """[N,H,W,1] -> [N,H,W,3] by repeating the channel; [N,H,W,3] unchanged; anything else is an error."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"Expected images [N, H, W, C] with C in (1, 3), got shape {images.shape}.")
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def make_grid(images: np.ndarray, *, nrow: int, padding: int = 2) -> np.ndarray:
    """uint8 images [N,H,W,C] -> one uint8 RGB grid [rows*(H+p)+p, cols*(W+p)+p, 3], `nrow` images per row.

    Images fill rows left to right; cells are separated and framed by `padding` black pixels.
    """
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}.")
    images = as_rgb(np.asarray(images))
    if images.dtype != np.uint8:
        raise ValueError(f"make_grid takes uint8 images (see to_uint8), got dtype {images.dtype}.")
    n, h, w, _ = images.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding, 3), np.uint8)
    for k, image in enumerate(images):
        top = (k // cols) * (h + padding) + padding
        left = (k % cols) * (w + padding) + padding
        grid[top : top + h, left : left + w] = image
    return grid


def save_grid(images, path: str | os.PathLike, *, nrow: int, padding: int = 2) -> np.ndarray:
    """Writes images [N,H,W,C] in [-1, 1] as a PNG grid with `nrow` images per row; returns the uint8 grid."""
    grid = make_grid(to_uint8(images), nrow=nrow, padding=padding)
    path, fs = os.fspath(path), files.gfile()  # local paths and gs:// alike
    fs.makedirs(os.path.dirname(path) or ".")
    with fs.GFile(path, "wb") as f:
        Image.fromarray(grid).save(f, format="PNG")
    return grid
