"""Stateless image transforms in TensorFlow, one image at a time: float32 [h, w, c] in [0, 1] -> [S, S, c].

Every random draw goes through `tf.random.stateless_*` with a `seed` of shape [2] (int64), so a view is a pure
function of (image, seed). The train pipeline derives the seed from (run seed, step, position, view), which is
what makes a resumed run see the very same augmentations.

The "simclr" view reproduces the official ImageNet augmentation (torchvision RandomResizedCrop,
RandomHorizontalFlip, RandomApply(ColorJitter(0.8, 0.8, 0.8, 0.2), p=0.8), RandomGrayscale(p=0.2),
GaussianBlur(kernel 23 at 224 px, sigma U[0.1, 2])) with torchvision's formulas for each op; the strengths are
the `data.*` config fields.
"""

import functools
import math

import ml_collections
import tensorflow as tf

# ITU-R 601-2 luma, the weights torchvision's grayscale conversion uses.
_LUMA = (0.299, 0.587, 0.114)


def eval_view(image: tf.Tensor, cfg: ml_collections.ConfigDict) -> tf.Tensor:
    """Deterministic view: resize the shorter side to image_size / eval_crop_fraction, center crop image_size."""
    resized = resize_shorter_side(image, int(cfg.image_size / cfg.eval_crop_fraction))
    return center_crop(resized, cfg.image_size)


def train_view(image: tf.Tensor, seed: tf.Tensor, cfg: ml_collections.ConfigDict) -> tf.Tensor:
    """One augmented view [S, S, c] of `image` [h, w, c], chosen by `cfg.augmentation`."""
    size = cfg.image_size
    if cfg.augmentation == "simclr":
        return simclr_view(image, seed, cfg)
    image = center_crop(resize_shorter_side(image, size), size)
    if cfg.augmentation == "flip":
        return tf.image.stateless_random_flip_left_right(image, seed)
    if cfg.augmentation == "affine":
        return random_affine(
            image, seed, max_degrees=cfg.affine_max_degrees, max_translate=cfg.affine_max_translate,
            scale_range=(cfg.affine_scale_min, cfg.affine_scale_max),
        )
    return image


def simclr_view(image: tf.Tensor, seed: tf.Tensor, cfg: ml_collections.ConfigDict) -> tf.Tensor:
    """Crop, flip, colour jitter (p), grayscale (p), Gaussian blur (p), in the official order."""
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 5))
    crop_seed, flip_seed, jitter_seed, gray_seed, blur_seed = seeds
    size = cfg.image_size
    image = random_resized_crop(
        image, crop_seed, size=size, scale=(cfg.crop_scale_min, cfg.crop_scale_max),
        ratio=(cfg.crop_ratio_min, cfg.crop_ratio_max),
    )
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    strengths = dict(
        brightness=cfg.jitter_brightness, contrast=cfg.jitter_contrast, saturation=cfg.jitter_saturation,
        hue=cfg.jitter_hue,
    )
    image = _apply_with_prob(functools.partial(color_jitter, **strengths), image, jitter_seed, cfg.jitter_prob)
    image = _apply_with_prob(lambda x, _: to_grayscale(x), image, gray_seed, cfg.grayscale_prob)
    kernel_size = 2 * (int(cfg.blur_kernel_fraction * size) // 2) + 1  # 23 at 224 px, as the official 0.1*224+1
    blur = functools.partial(
        gaussian_blur, kernel_size=kernel_size, sigma_range=(cfg.blur_sigma_min, cfg.blur_sigma_max)
    )
    return _apply_with_prob(blur, image, blur_seed, cfg.blur_prob)


def resize_shorter_side(image: tf.Tensor, size: int) -> tf.Tensor:
    """Bilinear, antialiased resize of [h, w, c] so that min(h, w) == size, keeping the aspect ratio.

    The longer side becomes floor(size * long / short), as torchvision's Resize(int).
    """
    hw = tf.cast(tf.shape(image)[:2], tf.float64)
    new_hw = tf.cast(tf.math.floor(size * hw / tf.reduce_min(hw)), tf.int32)
    new_hw = tf.maximum(new_hw, size)  # float error must not leave the shorter side one pixel short
    return _resize(image, new_hw)


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """The central [size, size, c] window of an image whose sides are both >= size."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    top, left = (h - size) // 2, (w - size) // 2
    crop = image[top : top + size, left : left + size]
    return tf.ensure_shape(crop, [size, size, image.shape[-1]])


def random_resized_crop(
    image: tf.Tensor, seed: tf.Tensor, *, size: int, scale: tuple[float, float], ratio: tuple[float, float],
    attempts: int = 10,
) -> tf.Tensor:
    """torchvision's RandomResizedCrop: a crop of area scale*A and aspect ratio w/h, resized to [size, size, c].

    Draws `attempts` candidates (area fraction U[scale], log-aspect U[log ratio]) and keeps the first that fits;
    if none fits, falls back to the central crop with the aspect ratio clamped into `ratio`.
    """
    area_seed, ratio_seed, top_seed, left_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    hw = tf.shape(image)[:2]
    height, width = tf.cast(hw[0], tf.float32), tf.cast(hw[1], tf.float32)
    target_area = height * width * tf.random.stateless_uniform([attempts], area_seed, scale[0], scale[1])
    log_ratio = tf.random.stateless_uniform([attempts], ratio_seed, math.log(ratio[0]), math.log(ratio[1]))
    aspect = tf.exp(log_ratio)
    crop_w = tf.round(tf.sqrt(target_area * aspect))  # round-half-even, as Python's round
    crop_h = tf.round(tf.sqrt(target_area / aspect))
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first = tf.reduce_min(tf.where(fits, tf.range(attempts), attempts - 1))  # the first candidate that fits

    in_ratio = width / height
    fallback_w = tf.where(in_ratio > ratio[1], tf.round(height * ratio[1]), width)
    fallback_h = tf.where(in_ratio < ratio[0], tf.round(width / ratio[0]), height)
    any_fits = tf.reduce_any(fits)
    crop_h = tf.cast(tf.where(any_fits, crop_h[first], fallback_h), tf.int32)
    crop_w = tf.cast(tf.where(any_fits, crop_w[first], fallback_w), tf.int32)
    random_top = tf.random.stateless_uniform([], top_seed, 0, hw[0] - crop_h + 1, dtype=tf.int32)
    random_left = tf.random.stateless_uniform([], left_seed, 0, hw[1] - crop_w + 1, dtype=tf.int32)
    top = tf.where(any_fits, random_top, (hw[0] - crop_h) // 2)
    left = tf.where(any_fits, random_left, (hw[1] - crop_w) // 2)
    crop = image[top : top + crop_h, left : left + crop_w]
    return tf.ensure_shape(_resize(crop, tf.constant([size, size])), [size, size, image.shape[-1]])


def color_jitter(
    image: tf.Tensor, seed: tf.Tensor, *, brightness: float, contrast: float, saturation: float, hue: float
) -> tf.Tensor:
    """torchvision's ColorJitter: the four adjustments in a random order, each with a random strength.

    brightness: x * f; contrast: blend with the mean luma; saturation: blend with the luma image, f drawn from
    U[1 - s, 1 + s] for each; hue: rotate the hue by U[-hue, hue] turns. Saturation and hue need 3 channels and
    leave a 1-channel image as it is.
    """
    order_seed, b_seed, c_seed, s_seed, h_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 5))

    def factor(s, strength):
        return tf.random.stateless_uniform([], s, max(0.0, 1.0 - strength), 1.0 + strength)

    b, c, s = factor(b_seed, brightness), factor(c_seed, contrast), factor(s_seed, saturation)
    h = tf.random.stateless_uniform([], h_seed, -hue, hue)
    colour = image.shape[-1] == 3
    ops = [
        lambda x: _blend(x, tf.zeros_like(x), b),
        lambda x: _blend(x, tf.reduce_mean(_luma(x)), c),
        (lambda x: _blend(x, _luma(x), s)) if colour else (lambda x: x),
        (lambda x: tf.image.adjust_hue(x, h)) if colour else (lambda x: x),
    ]
    order = tf.argsort(tf.random.stateless_uniform([4], order_seed))  # a uniform random permutation
    for i in range(4):
        image = tf.switch_case(order[i], [lambda op=op, x=image: op(x) for op in ops])
    return image


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
    """Luma replicated over the input's channels (torchvision's RandomGrayscale keeps 3 channels)."""
    return tf.broadcast_to(_luma(image), tf.shape(image))


def gaussian_blur(
    image: tf.Tensor, seed: tf.Tensor, *, kernel_size: int, sigma_range: tuple[float, float]
) -> tf.Tensor:
    """Separable Gaussian blur, sigma ~ U[sigma_range], odd `kernel_size`, reflected borders (as torchvision)."""
    if kernel_size < 3:
        return image
    sigma = tf.random.stateless_uniform([], seed, sigma_range[0], sigma_range[1])
    x = tf.range(kernel_size, dtype=tf.float32) - (kernel_size - 1) / 2
    kernel = tf.exp(-0.5 * tf.square(x / sigma))
    kernel /= tf.reduce_sum(kernel)
    channels = image.shape[-1]
    pad = kernel_size // 2
    padded = tf.pad(image[None], [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    vertical = tf.tile(tf.reshape(kernel, [kernel_size, 1, 1, 1]), [1, 1, channels, 1])
    horizontal = tf.reshape(vertical, [1, kernel_size, channels, 1])
    blurred = tf.nn.depthwise_conv2d(padded, vertical, [1, 1, 1, 1], "VALID")
    blurred = tf.nn.depthwise_conv2d(blurred, horizontal, [1, 1, 1, 1], "VALID")
    return blurred[0]


def random_affine(
    image: tf.Tensor, seed: tf.Tensor, *, max_degrees: float, max_translate: float, scale_range: tuple[float, float]
) -> tf.Tensor:
    """Rotation U[-d, d] degrees and zoom U[scale_range] about the centre, then a shift U[-t, t] * side per axis.

    Bilinear sampling; pixels from outside the image are 0 (black, -1 after scaling: the digits background).
    """
    rot_seed, scale_seed, shift_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    height, width = image.shape[0], image.shape[1]
    angle = tf.random.stateless_uniform([], rot_seed, -max_degrees, max_degrees) * (math.pi / 180.0)
    zoom = tf.random.stateless_uniform([], scale_seed, scale_range[0], scale_range[1])
    shift = tf.random.stateless_uniform([2], shift_seed, -max_translate, max_translate) * [width, height]
    return affine_transform(image, angle=angle, zoom=zoom, shift_xy=shift)


def affine_transform(image: tf.Tensor, *, angle: tf.Tensor, zoom: tf.Tensor, shift_xy: tf.Tensor) -> tf.Tensor:
    """Output pixel p shows input pixel R(-angle) (p - c - shift) / zoom + c, c the image centre; [h, w, c].

    p = (column, row): a positive angle turns the picture clockwise as displayed, a positive shift moves it
    right / down.
    """
    height, width = image.shape[0], image.shape[1]
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    ox, oy = cx + shift_xy[0], cy + shift_xy[1]
    # Rows of the output->input map in the [a0, a1, a2, b0, b1, b2, c0, c1] layout of ImageProjectiveTransform.
    transform = tf.stack([cos, sin, cx - cos * ox - sin * oy, -sin, cos, cy + sin * ox - cos * oy, 0.0, 0.0])
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=tf.cast(transform[None], tf.float32), output_shape=[height, width],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT",
    )
    return warped[0]


def _apply_with_prob(fn, image, seed, prob):
    """fn(image, seed') with probability `prob`, else image (torchvision's RandomApply)."""
    coin_seed, fn_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    apply = tf.random.stateless_uniform([], coin_seed) < prob
    return tf.cond(apply, lambda: fn(image, fn_seed), lambda: image)


def _blend(image, other, factor):
    return tf.clip_by_value(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def _luma(image):
    """[h, w, 1] luma of an RGB image; a 1-channel image is its own luma."""
    if image.shape[-1] == 1:
        return image
    return tf.reduce_sum(image * tf.constant(_LUMA, image.dtype), axis=-1, keepdims=True)


def _resize(image, size_hw):
    resized = tf.image.resize(image, size_hw, method="bilinear", antialias=True)
    return tf.clip_by_value(resized, 0.0, 1.0)


def to_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """[h, w, c] -> [h, w, channels]: grayscale is replicated to RGB, RGB is reduced to its luma."""
    if image.shape[-1] == channels:
        return image
    if image.shape[-1] == 1:
        return tf.tile(image, [1, 1, channels])
    if channels == 1:
        return _luma(image)
    raise ValueError(f"cannot turn a {image.shape[-1]}-channel image into {channels} channels; use 1 or 3.")
