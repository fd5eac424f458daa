"""lzn_jax.data.augment: each stateless transform against what it promises."""

import math

import numpy as np
import pytest
import tensorflow as tf

from lzn_jax import data
from lzn_jax.data import augment


def seed(i):
    return tf.constant([7, i], tf.int64)


def random_image(h, w, c=3, low=0.0, high=1.0, key=0):
    return tf.constant(np.random.default_rng(key).uniform(low, high, (h, w, c)).astype(np.float32))


def luma(x):
    return np.asarray(x) @ np.array([0.299, 0.587, 0.114], np.float32)


def test_to_channels_replicates_gray_and_reduces_rgb_to_luma():
    gray = random_image(4, 5, 1)
    np.testing.assert_array_equal(augment.to_channels(gray, 3).numpy(), np.repeat(gray.numpy(), 3, axis=-1))
    rgb = random_image(4, 5, 3)
    np.testing.assert_allclose(augment.to_channels(rgb, 1).numpy()[..., 0], luma(rgb), atol=1e-6)
    assert augment.to_channels(rgb, 3) is rgb


@pytest.mark.parametrize("hw, size, want", [((30, 60), 16, (16, 32)), ((61, 20), 16, (48, 16)), ((8, 8), 32, (32, 32))])
def test_resize_shorter_side_keeps_the_aspect_ratio(hw, size, want):
    assert tuple(augment.resize_shorter_side(random_image(*hw), size).shape[:2]) == want


def test_center_crop_takes_the_middle_window():
    image = random_image(10, 13)
    np.testing.assert_array_equal(augment.center_crop(image, 6).numpy(), image.numpy()[2:8, 3:9])


def test_eval_view_resizes_to_size_over_fraction_then_center_crops():
    cfg = data.default_config()
    cfg.update(image_size=28, num_channels=3, eval_crop_fraction=0.875)
    image = random_image(32, 40)  # shorter side already 28 / 0.875 = 32: no resampling, only the crop
    np.testing.assert_array_equal(augment.eval_view(image, cfg).numpy(), image.numpy()[2:30, 6:34])
    assert augment.eval_view(random_image(50, 90), cfg).shape == (28, 28, 3)


def test_random_resized_crop_of_the_full_area_is_a_plain_resize():
    image = random_image(20, 20)
    crop = augment.random_resized_crop(image, seed(0), size=20, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_allclose(crop.numpy(), image.numpy(), atol=1e-6)


def test_random_resized_crop_falls_back_to_the_clamped_central_crop():
    # A 40x20 (h x w) image cannot hold a square of its full area: torchvision's fallback takes the central
    # crop of width 20 and height round(20 / ratio_min) = 20.
    image = random_image(40, 20)
    crop = augment.random_resized_crop(image, seed(0), size=20, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_allclose(crop.numpy(), image.numpy()[10:30], atol=1e-6)


def test_random_resized_crop_areas_follow_the_scale_range():
    # Crop an image whose pixels hold their own coordinates: the crop's corners tell its size.
    rows, cols = np.meshgrid(np.arange(100.0), np.arange(100.0), indexing="ij")
    image = tf.constant(np.stack([rows, cols, np.zeros_like(rows)], -1) / 100.0, tf.float32)
    areas = []
    for i in range(60):
        crop = augment.random_resized_crop(image, seed(i), size=8, scale=(0.2, 0.5), ratio=(0.75, 4 / 3)).numpy()
        height = (crop[-1, 0, 0] - crop[0, 0, 0]) * 100 * 8 / 7  # corner pixel centres span 7/8 of the crop
        width = (crop[0, -1, 1] - crop[0, 0, 1]) * 100 * 8 / 7
        areas.append(height * width / 100**2)
        assert 0.7 <= width / height <= 1.4
    assert 0.17 <= min(areas) and max(areas) <= 0.53 and np.std(areas) > 0.05


def test_stateless_flip_depends_only_on_the_seed():
    cfg = data.default_config()
    cfg.update(image_size=8, num_channels=3, augmentation="flip")
    image = random_image(8, 8)
    outcomes = set()
    for i in range(16):
        view = augment.train_view(image, seed(i), cfg).numpy()
        np.testing.assert_array_equal(view, augment.train_view(image, seed(i), cfg).numpy())
        flipped = np.array_equal(view, image.numpy()[:, ::-1])
        assert flipped or np.array_equal(view, image.numpy())
        outcomes.add(flipped)
    assert outcomes == {True, False}


def test_color_jitter_with_zero_strength_is_the_identity():
    image = random_image(6, 6)
    out = augment.color_jitter(image, seed(0), brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    np.testing.assert_allclose(out.numpy(), image.numpy(), atol=1e-5)


def test_color_jitter_brightness_scales_contrast_keeps_mean_luma_saturation_keeps_luma():
    image = random_image(6, 6, low=0.4, high=0.6)  # mid-range: factors in [0.2, 1.8] never clip
    x = image.numpy()
    for i in range(4):
        bright = augment.color_jitter(image, seed(i), brightness=0.8, contrast=0.0, saturation=0.0, hue=0.0).numpy()
        ratio = bright / x
        np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-4)
        assert 0.2 <= ratio.flat[0] <= 1.8
        contrast = augment.color_jitter(image, seed(i), brightness=0.0, contrast=0.8, saturation=0.0, hue=0.0).numpy()
        np.testing.assert_allclose(luma(contrast).mean(), luma(x).mean(), atol=1e-5)
        assert not np.allclose(contrast, x, atol=1e-3)
        saturated = augment.color_jitter(image, seed(i), brightness=0.0, contrast=0.0, saturation=0.8, hue=0.0).numpy()
        np.testing.assert_allclose(luma(saturated), luma(x), atol=1e-5)


def test_color_jitter_of_a_gray_image_stays_gray_sized():
    out = augment.color_jitter(random_image(5, 5, 1), seed(1), brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2)
    assert out.shape == (5, 5, 1)


def test_grayscale_replicates_the_luma():
    image = random_image(4, 4)
    gray = augment.to_grayscale(image).numpy()
    for c in range(3):
        np.testing.assert_allclose(gray[..., c], luma(image), atol=1e-6)


def test_gaussian_blur_keeps_constants_and_smooths_noise():
    constant = tf.fill([12, 12, 3], 0.3)
    blurred = augment.gaussian_blur(constant, seed(0), kernel_size=5, sigma_range=(0.5, 2.0))
    np.testing.assert_allclose(blurred.numpy(), 0.3, atol=1e-6)
    noise = random_image(24, 24)
    smooth = augment.gaussian_blur(noise, seed(0), kernel_size=7, sigma_range=(1.5, 2.0)).numpy()
    assert smooth.shape == (24, 24, 3) and smooth.std() < 0.5 * noise.numpy().std()
    assert augment.gaussian_blur(noise, seed(0), kernel_size=1, sigma_range=(1.5, 2.0)) is noise


def test_affine_transform_shifts_rotates_and_fills_black():
    image = random_image(6, 6, 1)
    x = image.numpy()
    shifted = augment.affine_transform(image, angle=0.0, zoom=1.0, shift_xy=tf.constant([2.0, 0.0])).numpy()
    np.testing.assert_array_equal(shifted[:, 2:], x[:, :-2])
    np.testing.assert_array_equal(shifted[:, :2], 0.0)
    turned = augment.affine_transform(image, angle=math.pi / 2, zoom=1.0, shift_xy=tf.constant([0.0, 0.0])).numpy()
    np.testing.assert_allclose(turned, np.rot90(x, k=-1), atol=1e-5)  # clockwise as displayed


def test_random_affine_without_strength_is_the_identity():
    image = random_image(8, 8, 1)
    out = augment.random_affine(image, seed(3), max_degrees=0.0, max_translate=0.0, scale_range=(1.0, 1.0))
    np.testing.assert_allclose(out.numpy(), image.numpy(), atol=1e-6)


@pytest.mark.parametrize("prob, low, high", [(0.0, 0, 0), (1.0, 200, 200), (0.2, 20, 60)])
def test_apply_with_prob_applies_with_that_frequency(prob, low, high):
    applied = sum(
        bool(augment._apply_with_prob(lambda x, s: x + 1.0, tf.zeros([]), seed(i), prob).numpy() == 1.0)
        for i in range(200)
    )
    assert low <= applied <= high


@pytest.mark.parametrize("augmentation", ["none", "flip", "affine", "simclr"])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_train_view_has_the_output_shape_and_range(augmentation, channels):
    cfg = data.default_config()
    cfg.update(image_size=24, num_channels=channels, augmentation=augmentation)
    image = random_image(30, 41, channels)
    view = augment.train_view(image, seed(5), cfg).numpy()
    assert view.shape == (24, 24, channels)
    assert view.min() >= 0.0 and view.max() <= 1.0
    np.testing.assert_array_equal(view, augment.train_view(image, seed(5), cfg).numpy())


def test_simclr_views_differ_by_seed():
    cfg = data.default_config()
    cfg.update(image_size=32, num_channels=3, augmentation="simclr")
    image = random_image(48, 64)
    views = [augment.train_view(image, seed(i), cfg).numpy() for i in range(3)]
    assert not np.allclose(views[0], views[1]) and not np.allclose(views[1], views[2])
