"""Fréchet Inception Distance: the two pipelines the official code reports, and the evaluator.

Both pipelines quantise images to uint8 first (as the official extractors do) and feed the same FID
InceptionV3 (`inception.py`, TF graph `inception-2015-12-05`); they differ in how images reach 299x299:

* "clean" (clean-fid, the official `clean_fid` metric): each channel is resized as a float image with PIL's
  bicubic filter, clipped to [0, 255], then scaled as (x - 128) / 128.
* "rf" (the official `rf_fid` metric, i.e. score_sde's evaluation through the TF-Hub `tfgan/eval/inception`
  module): images are scaled as (x - 127.5) / 127.5 and the module resizes them to 299x299 with TF1's
  bilinear resize (`align_corners=False`, no half-pixel centres), reproduced here as two interpolation
  matrices.

Reference statistics (mean, covariance of a dataset split) are cached as .npz files keyed by every setting that
decides them (the data settings of `data.eval_images_key`, pipeline, subset, Inception weights), and reused by
later runs.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from lzn_jax import data, files
from lzn_jax.evaluators import common, inception
from lzn_jax.evaluators import images as image_utils

CLEAN = "clean"
RF = "rf"
PIPELINES = (CLEAN, RF)
_SIZE = inception.INPUT_SIZE


# ----------------------------------------------------------------------------------------------------------
# Statistics.


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Features [N, D] -> (mean [D], unbiased covariance [D, D]), both float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"feature_stats needs features [N >= 2, D], got shape {features.shape}.")
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


class Moments:
    """Running mean and covariance of feature rows [b, D] in float64, for any number of rows.

    `add(features [b, D])` any number of times, then `stats()` -> (mean [D], unbiased covariance [D, D]), equal
    to `feature_stats` of all rows stacked (up to float64 round-off), or `factor()` -> (mean [D], F [K, D],
    trace of the covariance) with Fᵀ F = the covariance. While at most D rows have come, the rows themselves are
    kept (at most D² numbers, as many as the sums take) and F is the centred rows / √(N − 1), K = N: FID then
    takes the singular values of an N × D product instead of two D × D eigendecompositions and a D × D SVD (the
    official 256 px runs score 1 024 samples, D = 2 048). Past D rows only the sums are kept (D + D² numbers)
    and F is the covariance's symmetric square root, K = D.
    """

    def __init__(self):
        self.count, self.total, self.outer, self.rows = 0, None, None, []

    def add(self, features) -> None:
        features = np.asarray(features, np.float64)
        self.count += len(features)
        if self.rows is not None:
            self.rows.append(features)
            if self.count <= features.shape[1]:
                return
            features, self.rows = np.concatenate(self.rows), None  # more rows than dimensions: keep the sums
        if self.total is None:
            self.total, self.outer = np.zeros(features.shape[1]), np.zeros((features.shape[1],) * 2)
        self.total += features.sum(axis=0)
        self.outer += features.T @ features

    def _check(self) -> None:
        if self.count < 2:
            raise ValueError(f"FID statistics need >= 2 feature rows, got {self.count}.")

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        self._check()
        if self.rows is not None:
            return feature_stats(np.concatenate(self.rows))
        mean = self.total / self.count
        return mean, (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)

    def factor(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(mean [D], F [K, D], trace of the covariance), Fᵀ F = the unbiased covariance (see the class)."""
        self._check()
        if self.rows is None:
            mean, sigma = self.stats()
            return mean, psd_sqrt(sigma), float(np.trace(sigma))
        rows = np.concatenate(self.rows)
        mean = rows.mean(axis=0)
        centred = (rows - mean) / np.sqrt(self.count - 1)
        return mean, centred, float(np.sum(centred**2))


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a covariance [D, D]: symmetrised, then through an eigendecomposition
    (negative round-off eigenvalues -> 0)."""
    eigvals, eigvecs = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians, in float64.

    Tr((S1 S2)^(1/2)) is the nuclear norm (sum of singular values) of S1^(1/2) S2^(1/2): its Gram matrix
    S1^(1/2) S2 S1^(1/2) has the spectrum of S1 S2. Unlike a general `sqrtm` of S1 S2, this has no imaginary
    round-off, and directions outside either covariance's support enter as products of two tiny roots, so
    singular covariances (fewer samples than dimensions) still give FID(x, x) = 0 to float64 precision.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(
            f"frechet_distance needs mu [D] and sigma [D, D] for both Gaussians, got mu1 {mu1.shape}, "
            f"sigma1 {sigma1.shape}, mu2 {mu2.shape}, sigma2 {sigma2.shape}."
        )
    return frechet_from_factor(mu1, psd_sqrt(sigma1), np.trace(sigma1), mu2, psd_sqrt(sigma2), np.trace(sigma2))


def frechet_from_factor(mu1, factor1, trace1, mu2, root2, trace2) -> float:
    """`frechet_distance` from any factor F1 [K, D] of S1 (F1ᵀ F1 = S1, e.g. `Moments.factor`) and S2's symmetric
    root [D, D] (`psd_sqrt`): Tr((S1 S2)^(1/2)) is the nuclear norm of F1 S2^(1/2) for every such F1, since
    S2^(1/2) S1 S2^(1/2) has the spectrum of S1 S2. The evaluator keeps the reference's root across scores."""
    trace_sqrt = np.linalg.svd(factor1 @ root2, compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff @ diff + trace1 + trace2 - 2.0 * trace_sqrt)


# ----------------------------------------------------------------------------------------------------------
# Resizing to the network's 299x299.


def _clean_resize_image(image: np.ndarray) -> np.ndarray:
    channels = []
    for c in range(image.shape[-1]):
        plane = Image.fromarray(image[..., c].astype(np.float32))  # mode "F": no quantisation after resizing
        plane = plane.resize((_SIZE, _SIZE), resample=Image.Resampling.BICUBIC)
        channels.append(np.asarray(plane))
    return np.clip(np.stack(channels, axis=-1), 0.0, 255.0)


def clean_resize(images: np.ndarray) -> np.ndarray:
    """clean-fid's "clean" resize: uint8 [N,H,W,3] -> float32 [N,299,299,3] in [0, 255].

    Each channel is resized on its own as a float32 PIL image with the bicubic filter, then clipped.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"clean_resize takes uint8 images [N, H, W, C], got {images.dtype} {images.shape}.")
    # PIL releases the GIL while resampling, so threads use several cores.
    out = np.empty((len(images), _SIZE, _SIZE, images.shape[-1]), np.float32)
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, resized in enumerate(pool.map(_clean_resize_image, images)):
            out[i] = resized
    return out


def tf_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] interpolation matrix of TF1 `resize_bilinear` (align_corners=False, no half pixel).

    Output pixel i samples the input at i * in_size / out_size, linearly between the two neighbouring pixels
    (the last one repeated at the border).
    """
    source = np.arange(out_size, dtype=np.float64) * (in_size / out_size)
    lower = np.floor(source).astype(np.int64)
    upper = np.minimum(lower + 1, in_size - 1)
    frac = source - lower
    matrix = np.zeros((out_size, in_size), np.float64)
    np.add.at(matrix, (np.arange(out_size), lower), 1.0 - frac)
    np.add.at(matrix, (np.arange(out_size), upper), frac)
    return matrix.astype(np.float32)


def rf_resize(images: jax.Array, size: int = _SIZE) -> jax.Array:
    """TF1 bilinear resize of [N,H,W,C] float images to [N,size,size,C] (the TF-Hub Inception module's resize)."""
    rows = jnp.asarray(tf_bilinear_matrix(images.shape[1], size))
    cols = jnp.asarray(tf_bilinear_matrix(images.shape[2], size))
    return jnp.einsum("oh,nhwc,pw->nopc", rows, images, cols, precision=jax.lax.Precision.HIGHEST)


# ----------------------------------------------------------------------------------------------------------
# Features.


@functools.partial(jax.jit, static_argnames="pipeline")
def _pool3(variables: dict, pixels: jax.Array, pipeline: str) -> jax.Array:
    """Pixels [B,H,W,3] in [0, 255] (clean: already resized to 299) -> pool_3 features [B, 2048]."""
    # Full float32 convolutions: TF32/bf16 defaults on accelerators would shift the features, and FID with them.
    with jax.default_matmul_precision("float32"):
        if pipeline == CLEAN:
            x = (pixels - 128.0) / 128.0
        else:
            x = rf_resize((pixels - 127.5) / 127.5)
        return inception.InceptionV3().apply(variables, x)


class InceptionFeatures:
    """pool_3 features of images through an FID pipeline, in fixed-size batches (one compilation per pipeline).

    Without `mesh` one device runs the network on every batch. With `mesh`, each batch is split over the mesh's
    data axis (the variables replicated): every device runs batch_size / devices images, so the memory of the
    pass (17.6 GiB on one device for CIFAR-10's 2000-image batches, `docs/scaling.md`) and its time divide by
    the device count. Features do not depend on the split: the network is per image (batch norm in inference).

    Args:
      variables: FID Inception `{"params", "batch_stats"}` (`inception.load_inception_params`).
      batch_size: images per network call; the last chunk is zero-padded to it.
      mesh: the evaluation mesh, or None.
    """

    def __init__(self, variables: dict, *, batch_size: int, mesh=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.batch_size, self.mesh = batch_size, mesh
        if mesh is None:
            self.variables = jax.device_put(variables)  # once, not a host-to-device copy per call
            return
        self.variables = jax.device_put(variables, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        self.networks = {p: common.sharded_fn(lambda v, x, *, axis_name, p=p: _pool3(v, x, p), mesh, num_row_args=1)
                         for p in PIPELINES}  # fmt: skip

    def _pool3(self, pixels: np.ndarray, pipeline: str) -> np.ndarray:
        if self.mesh is None:
            return np.asarray(_pool3(self.variables, pixels, pipeline))
        rows, count = common.rows_of_full_batch(pixels, self.mesh)
        return common.fetch(self.networks[pipeline](self.variables, rows))[:count]

    def __call__(self, images, pipeline: str) -> np.ndarray:
        """Images [N,H,W,C] in [-1, 1], C in (1, 3) -> float32 features [N, 2048]."""
        if pipeline not in PIPELINES:
            raise ValueError(f"Unknown FID pipeline {pipeline!r}; expected one of {PIPELINES}.")
        pixels = image_utils.as_rgb(image_utils.to_uint8(images))
        out = []
        for start in range(0, len(pixels), self.batch_size):
            chunk = pixels[start : start + self.batch_size]
            chunk = clean_resize(chunk) if pipeline == CLEAN else chunk.astype(np.float32)
            padded = np.zeros((self.batch_size, *chunk.shape[1:]), np.float32)
            padded[: len(chunk)] = chunk
            out.append(self._pool3(padded, pipeline)[: len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, inception.FEATURE_DIM), np.float32)

    def compile_target(self, pipeline: str, image_size: int):
        """(function of (params, variables, pixels), abstract (variables, pixel rows)) of one sharded call."""
        size = _SIZE if pipeline == CLEAN else image_size  # clean resizes on the host, rf inside the network
        variables = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.variables)
        pixels = common.row_structs(self.mesh, self.batch_size, ((size, size, 3), np.float32))
        return _WithoutParams(self.networks[pipeline]), (variables, *pixels)


class _WithoutParams:
    """A compile target for the scale rehearsal, which passes the model params first: a function that takes none."""

    def __init__(self, fn):
        self.fn = fn

    def trace(self, params, *args):
        del params
        return self.fn.trace(*args)


# ----------------------------------------------------------------------------------------------------------
# The evaluator.


def _canonical(key: dict) -> str:
    return json.dumps(key, sort_keys=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(text)).strip("-") or "x"


class FID:
    """FID of samples against a split (official `CleanFID` / `RFFID` metrics), for each sampler and pipeline.

    Yields `eval/{metric}_{pipeline}_{sampler}` (metric "fid" unless named otherwise; pipeline "clean" or "rf").
    `num_samples` images from each sampler (sample n has label n mod num_classes) against the statistics of the
    split `split`, cached in the workdir (keyed by `reference_key`: the data settings, pipeline, subset and
    Inception weights) and reused by later runs. `num_reference_samples=0`: the whole split (official CIFAR-10: 50 000
    against 50 000); N > 0: the first N examples of `torch.randperm(len(split))` seeded with
    `reference_shuffle_seed` (official 256 px sets: 1 024 against the first 1 024 of its seed-0 sampler order),
    or the first N in file order with `reference_shuffle_seed=None`. Every run samples with the same keys
    (folded from `seed`).

    Differences from the official metric: the official draws the generated labels from the reference images'
    labels (the same counts for CIFAR-10's balanced 50 000); its order of the files is that of its dataset
    class: the same sorted file list for image folders, torchvision's order for CIFAR-10, not TFDS's (only a
    subset's membership depends on it, and CIFAR-10 uses all of it).

    Host memory per process (`host_memory_bytes`): the reference pass (`common.ordered_split` for a subset:
    min(N · H·W·C · 4, max_host_bytes); tf.data batches for the whole split) or one batch of samples, whichever
    is larger, plus running feature moments (`Moments`: at most 2048 + 2048² float64 per pipeline and side, and
    (2048 + batch_size) · 2048 more for the one batch that takes them past 2 048 rows), the reference covariance's
    root (2048² float64 per pipeline) and the resized chunk the Inception network takes (batch_size · 299² · 3 · 4
    bytes, twice). Nothing grows with the number of reference images or samples.

    Args: `sample_fn` (`predict.SampleFn`'s signature, with `num_classes`), `data_cfg` (config.data), `mesh` (the
    Inception pass is split over its data axis), `workdir`
    (the statistics cache), `eval_batch_size` (the default `batch_size`: samples per call and images per
    Inception call); the rest are `config.evals.<name>` settings; `inception_weights` is a local FID Inception
    weights file (.pth or .npz, see `inception.load_inception_params`).
    """

    def __init__(self, *, sample_fn, data_cfg, mesh, workdir, eval_batch_size, inception_weights="",
                 samplers=("rk45", "euler"), metric="fid", num_samples=50000, split="train", pipelines=(CLEAN,),
                 num_reference_samples=0, reference_shuffle_seed: int | None = 0, batch_size: int | None = None,
                 max_host_bytes=common.DEFAULT_MAX_HOST_BYTES, weights: tuple[str, ...] | None = None,
                 seed=0):  # fmt: skip
        if not inception_weights:
            raise ValueError(
                "The fid evaluator needs config.evals.<name>.inception_weights: a local copy of the FID Inception "
                "weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or its .npz conversion)."
            )
        pipelines = (pipelines,) if isinstance(pipelines, str) else tuple(pipelines)
        unknown = [p for p in pipelines if p not in PIPELINES]
        if unknown or not pipelines:
            raise ValueError(f"pipelines must be a non-empty subset of {PIPELINES}, got {pipelines}.")
        num_reference_samples = num_reference_samples or None
        if num_samples < 2 or (num_reference_samples is not None and num_reference_samples < 2):
            raise ValueError(
                f"FID needs >= 2 samples on each side, got num_samples={num_samples}, "
                f"num_reference_samples={num_reference_samples}."
            )
        self.sample_fn, self.data_cfg = sample_fn, data_cfg
        self.samplers = (samplers,) if isinstance(samplers, str) else tuple(samplers)
        self.metric, self.weights, self.seed = metric, common.check_weights(weights), seed
        self.batch_size, self.max_host_bytes = int(batch_size or eval_batch_size), max_host_bytes
        self.num_samples, self.split, self.pipelines = int(num_samples), split, pipelines
        self.num_reference_samples = num_reference_samples
        # The first num_reference_samples of the split's seed-`reference_shuffle_seed` torch.randperm (None: the
        # split's own order), drawn when the reference split is first read.
        self.reference_shuffle_seed = None if num_reference_samples is None else reference_shuffle_seed
        self.image_size = int(data_cfg.image_size)
        self.inception_weights = os.fspath(inception_weights)
        self.features = InceptionFeatures(inception.load_inception_params(inception_weights), batch_size=self.batch_size,
                                          mesh=mesh)  # fmt: skip
        self.cache_dir = os.fspath(workdir)
        self._reference: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._reference_root: dict[str, np.ndarray] = {}

    # -- the reference split --------------------------------------------------------------------------------

    def reference_order(self) -> np.ndarray | None:
        """Indices [num_reference_samples] of the reference subset in the split, or None (the split's own order)."""
        if self.reference_shuffle_seed is None:
            return None
        total = data.num_examples(self.data_cfg, self.split)
        return common.torch_randperm(total, self.reference_shuffle_seed, self.num_reference_samples)

    def _reference_batches(self) -> Iterable[dict]:
        order = self.reference_order()
        if order is None:
            return data.eval_iterator(self.data_cfg, split=self.split, batch_size=self.batch_size)
        return common.ordered_split(self.data_cfg, self.split, order, self.batch_size, self.max_host_bytes)

    def reference_key(self, pipeline: str) -> dict:
        """Every setting that decides the reference statistics of `pipeline`: what the cache is keyed by."""
        # The split's size too: statistics of a folder read while it was still being copied were reused after.
        images = dict(data.eval_images_key(self.data_cfg, self.split), num_examples=self._split_size)
        return dict(data=images, pipeline=pipeline, num_reference_samples=self.num_reference_samples,
                    reference_shuffle_seed=self.reference_shuffle_seed,
                    inception_weights=self._weights_id())  # fmt: skip

    @functools.cached_property
    def _split_size(self) -> int:
        return data.num_examples(self.data_cfg, self.split)

    def cache_path(self, pipeline: str) -> str:
        """Where the reference statistics of `pipeline` are cached: a readable name and a digest of the key."""
        count = "all" if self.num_reference_samples is None else f"n{self.num_reference_samples}"
        if self.reference_shuffle_seed is not None:
            count += f"-torchperm{self.reference_shuffle_seed}"
        dataset = self.data_cfg.name or self.data_cfg.source
        digest = hashlib.sha256(_canonical(self.reference_key(pipeline)).encode()).hexdigest()[:10]
        name = f"fid_stats_{_slug(dataset)}_{_slug(self.split)}_{pipeline}_{self.image_size}px_{count}_{digest}.npz"
        return os.path.join(self.cache_dir, name)

    def _weights_id(self) -> str:
        return f"{os.path.basename(self.inception_weights)}:{os.path.getsize(self.inception_weights)}"

    def _load_cached(self, pipeline: str) -> tuple[np.ndarray, np.ndarray] | None:
        path, fs = self.cache_path(pipeline), files.gfile()  # the cache sits in the workdir: maybe gs://
        if not fs.exists(path):
            return None
        with fs.GFile(path, "rb") as f, np.load(f) as cached:
            if "key" not in cached or str(cached["key"]) != _canonical(self.reference_key(pipeline)):
                return None  # another reference set under the same digest: recompute rather than reuse it
            return cached["mu"], cached["sigma"]

    def _save_cached(self, pipeline: str, mu: np.ndarray, sigma: np.ndarray, count: int) -> None:
        if jax.process_index() != 0:
            return
        fs = files.gfile()
        fs.makedirs(self.cache_dir)
        path = self.cache_path(pipeline)
        tmp = f"{path}.tmp.npz"
        buffer = io.BytesIO()  # zipfile reads back what it writes: a write-only GCS stream cannot serve that
        np.savez(buffer, mu=mu, sigma=sigma, num_samples=count, key=_canonical(self.reference_key(pipeline)))
        with fs.GFile(tmp, "wb") as f:
            f.write(buffer.getvalue())
        fs.rename(tmp, path, overwrite=True)  # an interrupted run never leaves a truncated cache behind

    def _reference_images(self) -> Iterator[np.ndarray]:
        """Reference images [b,H,W,C], masked rows dropped, stopping at `num_reference_samples`."""
        remaining = self.num_reference_samples
        for batch in self._reference_batches():
            images = np.asarray(batch["image"])
            if "mask" in batch:
                images = images[np.asarray(batch["mask"], bool)]
            if remaining is not None:
                images = images[:remaining]
                remaining -= len(images)
            yield images
            if remaining == 0:
                return
        if remaining:
            raise ValueError(
                f"The reference split has {self.num_reference_samples - remaining} images, fewer than "
                f"num_reference_samples={self.num_reference_samples}."
            )

    def reference_stats(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(mu, sigma) of the reference split per pipeline: from memory, the cache, or one pass over the data."""
        missing = [p for p in self.pipelines if p not in self._reference]
        for p in list(missing):
            cached = self._load_cached(p)
            if cached is not None:
                self._reference[p] = cached
                missing.remove(p)
        if missing:
            moments = {p: Moments() for p in missing}
            for images in self._reference_images():
                for p in missing:
                    moments[p].add(self.features(images, p))
            for p in missing:
                self._reference[p] = moments[p].stats()
                self._save_cached(p, *self._reference[p], count=moments[p].count)
        return {p: self._reference[p] for p in self.pipelines}

    # -- samples ---------------------------------------------------------------------------------------------

    def reference_root(self, pipeline: str) -> np.ndarray:
        """The symmetric square root [D, D] of the reference covariance, computed once per pipeline: every score
        of every sampler and every evaluation reuses it."""
        if pipeline not in self._reference_root:
            self._reference_root[pipeline] = psd_sqrt(self.reference_stats()[pipeline][1])
        return self._reference_root[pipeline]

    def sample_moments(self, params, sampler: str) -> dict[str, Moments]:
        """Feature moments of `num_samples` images of `sampler` per pipeline, accumulated batch by batch. Sample n
        has label n mod num_classes, so the classes are as balanced as num_samples allows (cycling within each
        batch over-represented the first batch_size mod num_classes classes: 4 % more of classes 0-5 with 256 per
        batch and 10 classes)."""
        base = jax.random.key(self.seed)
        moments = {p: Moments() for p in self.pipelines}
        done = 0
        for i in range(-(-self.num_samples // self.batch_size)):
            labels = (i * self.batch_size + np.arange(self.batch_size)) % self.sample_fn.num_classes
            images = np.asarray(self.sample_fn(params, jax.random.fold_in(base, i), labels, sampler))
            if images.shape[0] != self.batch_size:
                raise ValueError(f"sample_fn returned {images.shape[0]} images for {self.batch_size} labels.")
            images = images[: self.num_samples - done]
            done += len(images)
            for p in self.pipelines:
                moments[p].add(self.features(images, p))
        return moments

    def scores(self, params, sampler: str) -> dict[str, float]:
        """{pipeline: FID} of `sampler`'s images against the reference split."""
        reference = self.reference_stats()
        generated = self.sample_moments(params, sampler)
        out = {}
        for p in self.pipelines:
            mu, sigma = reference[p]
            out[p] = frechet_from_factor(*generated[p].factor(), mu, self.reference_root(p), np.trace(sigma))
        return out

    def run(self, params, step) -> Iterator[tuple[str, float]]:
        del step  # every evaluation samples with the same keys
        for sampler in self.samplers:
            for pipeline, value in self.scores(params, sampler).items():
                yield f"eval/{self.metric}_{pipeline}_{sampler}", value

    def host_memory_bytes(self) -> int:
        """Peak host RAM of one run per process, in bytes (the formula in the class docstring)."""
        image = common.image_bytes(self.data_cfg)
        if self.reference_shuffle_seed is None:
            reference_pass = common.pipeline_bytes(self.data_cfg, self.batch_size)
        else:
            reference_pass = min(self.num_reference_samples * image, max(self.max_host_bytes, self.batch_size * image))
        dim = inception.FEATURE_DIM
        moments = len(self.pipelines) * 8 * (2 * (dim + dim**2) + dim**2) + 8 * (dim + self.batch_size) * dim
        resized = 2 * self.batch_size * _SIZE * _SIZE * 3 * 4
        return max(reference_pass, self.batch_size * image) + moments + resized

    def compile_targets(self) -> dict:
        """The samplers' functions at the batch the evaluator calls them with, and the Inception network's per
        pipeline (on one device, `batch_size` images a call), for the scale rehearsal."""
        targets = {name: self.sample_fn.compile_target(self.batch_size, name) for name in self.samplers}
        for p in self.pipelines:
            targets[f"inception_{p}"] = self.features.compile_target(p, self.image_size)
        return targets
