"""Per-example image augmentations in TensorFlow, driven by explicit stateless seeds.

Every random draw takes its seed from (run seed, step, position in the global batch), so a batch is the same
whichever host computes it and however often the run is restarted. Images are float32 in [0, 1] here; the
pipeline maps them to [-1, 1] afterwards.

The ImageNet pipeline of case study 2 follows the official `ImageNetAug` (torchvision): RandomResizedCrop
(scale 0.08–1, ratio 3/4–4/3), horizontal flip, colour jitter (0.8, 0.8, 0.8, 0.2) with probability 0.8,
grayscale with probability 0.2, and a Gaussian blur with kernel 0.1·size + 1 and σ ~ U(0.1, 2).
"""

from __future__ import annotations

import math

import tensorflow as tf


def _seeds(seed, count):
    """`count` independent stateless seeds [2] from one."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=count))


def _uniform(seed, low=0.0, high=1.0):
    return tf.random.stateless_uniform([], seed, minval=low, maxval=high)


def random_resized_crop(image, seed, size, scale_min, ratio=(3 / 4, 4 / 3)):
    """torchvision RandomResizedCrop: a crop of area fraction U(scale_min, 1) and log-uniform aspect, resized."""
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        area_range=(scale_min, 1.0), aspect_ratio_range=ratio, max_attempts=10, use_image_if_no_bounding_boxes=True,
    )  # fmt: skip
    crop = tf.slice(image, begin, crop_size)
    return tf.image.resize(crop, (size, size), method="bicubic", antialias=True)


def rotate(image, seed, max_degrees):
    """Rotation by U(−max, max) degrees about the centre, bilinear, zero (black) outside."""
    angle = _uniform(seed, -max_degrees, max_degrees) * math.pi / 180.0
    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    # output (x, y) samples input (cos·x − sin·y + a, sin·x + cos·y + b) so the centre maps to itself
    a = (w - 1) / 2 - cos * (w - 1) / 2 + sin * (h - 1) / 2
    b = (h - 1) / 2 - sin * (w - 1) / 2 - cos * (h - 1) / 2
    transform = tf.stack([cos, -sin, a, sin, cos, b, 0.0, 0.0])[None]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform, output_shape=tf.shape(image)[:2], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT",
    )  # fmt: skip
    return out[0]


def color_jitter(image, seed, strength, hue):
    """Brightness, contrast, saturation factors U(1−s, 1+s) and a hue shift U(−hue, hue) (RGB only)."""
    s1, s2, s3, s4 = _seeds(seed, 4)
    image = image * _uniform(s1, 1 - strength, 1 + strength)
    mean = tf.reduce_mean(tf.image.rgb_to_grayscale(image) if image.shape[-1] == 3 else image)
    image = (image - mean) * _uniform(s2, 1 - strength, 1 + strength) + mean
    if image.shape[-1] == 3:
        gray = tf.image.rgb_to_grayscale(image)
        image = (image - gray) * _uniform(s3, 1 - strength, 1 + strength) + gray
        image = tf.image.adjust_hue(tf.clip_by_value(image, 0.0, 1.0), _uniform(s4, -hue, hue))
    return tf.clip_by_value(image, 0.0, 1.0)


def grayscale(image):
    if image.shape[-1] != 3:
        return image
    return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def gaussian_blur(image, seed, kernel_size, sigma_range=(0.1, 2.0)):
    """Separable Gaussian blur, σ ~ U(sigma_range), reflect padding (torchvision GaussianBlur)."""
    sigma = _uniform(seed, *sigma_range)
    radius = kernel_size // 2
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-(x**2) / (2.0 * sigma**2))
    kernel /= tf.reduce_sum(kernel)
    channels = image.shape[-1]
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    horizontal = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
    vertical = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
    out = tf.nn.depthwise_conv2d(padded, horizontal, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(out, vertical, [1, 1, 1, 1], "VALID")[0]


def resize_center_crop(image, size, resize_to=None):
    """Shorter side resized to `resize_to` (default `size`), then the central size × size crop."""
    resize_to = resize_to or size
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = resize_to / tf.minimum(h, w)
    new_h = tf.cast(tf.round(h * scale), tf.int32)
    new_w = tf.cast(tf.round(w * scale), tf.int32)
    image = tf.image.resize(image, (new_h, new_w), method="bicubic", antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return tf.clip_by_value(image[top : top + size, left : left + size], 0.0, 1.0)


def fit(image, size):
    """[h, w, c] -> [size, size, c]: unchanged when already that size (in-memory sources), else resize + crop."""
    same = image.shape[0] == size and image.shape[1] == size
    return image if same else resize_center_crop(image, size)


def augment(image, seed, cfg, size):
    """One augmented view: image [h, w, c] in [0, 1] -> [size, size, c] in [0, 1]. `cfg` is data_cfg.augment."""
    s_crop, s_rot, s_flip, s_jitter_p, s_jitter, s_gray, s_blur_p, s_blur = _seeds(seed, 8)
    channels = image.shape[-1]
    if cfg.crop_scale_min < 1.0:
        image = random_resized_crop(image, s_crop, size, cfg.crop_scale_min)
    else:
        image = fit(image, size)
    image = tf.ensure_shape(image, [size, size, channels])  # crops have dynamic shapes; the rest needs them
    if cfg.max_rotate_degrees > 0:
        image = rotate(image, s_rot, cfg.max_rotate_degrees)
    if cfg.flip:
        image = tf.image.stateless_random_flip_left_right(image, s_flip)
    if cfg.color_jitter > 0:
        image = tf.cond(
            _uniform(s_jitter_p) < cfg.color_jitter_prob,
            lambda: color_jitter(image, s_jitter, cfg.color_jitter, cfg.hue),
            lambda: image,
        )
    if cfg.grayscale_prob > 0:
        image = tf.cond(_uniform(s_gray) < cfg.grayscale_prob, lambda: grayscale(image), lambda: image)
    if cfg.blur_prob > 0:
        kernel = int(cfg.blur_kernel_fraction * size) // 2 * 2 + 1
        image = tf.cond(
            _uniform(s_blur_p) < cfg.blur_prob, lambda: gaussian_blur(image, s_blur, kernel), lambda: image
        )
    return tf.clip_by_value(image, 0.0, 1.0)


def is_identity(cfg) -> bool:
    return (
        cfg.crop_scale_min >= 1.0 and cfg.max_rotate_degrees <= 0 and not cfg.flip and cfg.color_jitter <= 0
        and cfg.grayscale_prob <= 0 and cfg.blur_prob <= 0
    )  # fmt: skip
