"""to_uint8 conversion and PNG grids."""

import numpy as np
import pytest
from PIL import Image

from lzn_jax.evaluators import images


def test_to_uint8_inverts_the_data_scaling_for_every_level():
    levels = np.arange(256)
    assert np.array_equal(images.to_uint8(levels / 255.0 * 2.0 - 1.0), levels.astype(np.uint8))


def test_to_uint8_clips_and_rounds_to_nearest():
    x = np.array([-3.0, -1.0, 0.0, 1.0, 7.0, 0.4 / 255 * 2 - 1, 1.6 / 255 * 2 - 1], np.float32)
    # 0 maps to exactly 127.5, which np.around (as in the official code) sends to the even 128.
    assert images.to_uint8(x).tolist() == [0, 0, 128, 255, 255, 0, 2]


def test_make_grid_places_images_like_torchvision():
    imgs = np.stack([np.full((4, 5, 3), 10 * (k + 1), np.uint8) for k in range(5)])
    grid = images.make_grid(imgs, nrow=3, padding=2)
    assert grid.shape == (2 * (4 + 2) + 2, 3 * (5 + 2) + 2, 3)
    for k in range(5):
        top, left = (k // 3) * 6 + 2, (k % 3) * 7 + 2
        assert np.all(grid[top : top + 4, left : left + 5] == 10 * (k + 1))
    assert np.all(grid[:2] == 0) and np.all(grid[:, :2] == 0)  # the border
    assert np.all(grid[8:, 16:] == 0)  # the empty sixth cell


def test_make_grid_replicates_grey_and_rejects_floats():
    grey = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 1)
    grid = images.make_grid(grey, nrow=2, padding=0)
    assert grid.shape == (3, 6, 3)
    assert np.array_equal(grid[..., 0], grid[..., 2])
    with pytest.raises(ValueError, match="uint8"):
        images.make_grid(grey.astype(np.float32), nrow=2)
    with pytest.raises(ValueError, match="nrow"):
        images.make_grid(grey, nrow=0)
    with pytest.raises(ValueError, match="C in"):
        images.make_grid(np.zeros((2, 3, 3, 2), np.uint8), nrow=1)


def test_save_grid_writes_the_png_it_returns(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (6, 8, 8, 3)).astype(np.float32)
    path = tmp_path / "samples" / "grid.png"
    grid = images.save_grid(x, path, nrow=3)
    assert grid.shape == (2 * 10 + 2, 3 * 10 + 2, 3)
    assert np.array_equal(grid[2:10, 2:10], images.to_uint8(x[0]))
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert np.array_equal(np.asarray(png), grid)
