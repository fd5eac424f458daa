"""Linear probing (case study 2): a linear classifier on encoder features, trained with AdamW.

Both protocols share the official probe's pieces: a `Linear(F, K)` head (PyTorch's default uniform init),
cross-entropy, AdamW (lr 3e-4, weight decay 0 by default), shuffled minibatches with the last partial batch
dropped, raw (unnormalised) features, top-1 accuracy on the test split.

* `fit_streamed_probe` (the paper's protocol, official `LinearProbing`): the head trains one minibatch at a
  time on features the caller computes from freshly augmented training images each epoch; nothing is kept
  between minibatches, so memory does not depend on the dataset size. The test split is scored once, after
  the last epoch (the official scores it after every epoch and logs the list; its last entry is this number).
* `fit_linear_probe` (the fast "frozen" protocol): features of the un-augmented split are computed once and
  held, [N, F], and the whole optimisation is one `jax.jit` with the epochs and steps in `lax.scan`.
  `standardize=True` (off by default, as the official) first z-scores every feature with the training split's
  mean and std, the StandardScaler step of a scikit-learn probe: raw features of very different scales make a
  fixed-budget Adam probe underfit, and the pixel baseline gets the same treatment.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lzn_jax import data, parallel
from lzn_jax.evaluators import common

# Metric-name suffix per feature kind; the official metric reports the no-head features.
_SUFFIX = {"no_head": "", "head": "_head", "pixels": "_pixels"}
MODES = ("no_head", "head")
AUGMENTED, FROZEN = "augmented", "frozen"
PROTOCOLS = (AUGMENTED, FROZEN)


def metrics(results: dict[str, dict[str, float]], protocol: str) -> Iterator[tuple[str, float]]:
    """`{mode: fit result}` -> metric names that say the protocol.

    The paper's protocol: `eval/linear_probe_accuracy{suffix}` (and `_train_accuracy`); the frozen-features
    protocol: `eval/linear_probe_frozen_accuracy{suffix}`. Suffix: "" (no head), "_head", "_pixels".
    """
    infix = "" if protocol == AUGMENTED else f"_{protocol}"
    for mode, result in results.items():
        yield f"eval/linear_probe{infix}_accuracy{_SUFFIX[mode]}", result["accuracy"]
        yield f"eval/linear_probe{infix}_train_accuracy{_SUFFIX[mode]}", result["train_accuracy"]


def _init_head(key: jax.Array, in_dim: int, num_classes: int) -> dict:
    """PyTorch `nn.Linear` init: weight and bias ~ U(-1/sqrt(in_dim), 1/sqrt(in_dim))."""
    bound = 1.0 / np.sqrt(in_dim)
    k_w, k_b = jax.random.split(key)
    return {
        "w": jax.random.uniform(k_w, (in_dim, num_classes), minval=-bound, maxval=bound),
        "b": jax.random.uniform(k_b, (num_classes,), minval=-bound, maxval=bound),
    }


def _logits(head: dict, x: jax.Array) -> jax.Array:
    return jnp.dot(x, head["w"], precision=jax.lax.Precision.HIGHEST) + head["b"]


def _loss(head: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(_logits(head, x), y).mean()


@functools.partial(
    jax.jit, static_argnames=("num_classes", "lr", "num_epochs", "batch_size", "weight_decay")
)
def _train_head(
    x: jax.Array, y: jax.Array, key: jax.Array, *, num_classes, lr, num_epochs, batch_size, weight_decay
) -> tuple[dict, jax.Array]:
    """Trains the head on x [N, F], y [N]; returns (head, mean train loss per epoch [num_epochs])."""
    n = x.shape[0]
    steps = n // batch_size
    init_key, shuffle_key = jax.random.split(key)
    head = _init_head(init_key, x.shape[1], num_classes)
    optimizer = optax.adamw(lr, weight_decay=weight_decay)  # decoupled decay on weight and bias, as torch AdamW

    def step(carry, batch):
        head, opt_state = carry
        loss, grads = jax.value_and_grad(_loss)(head, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, head)
        return (optax.apply_updates(head, updates), opt_state), loss

    def epoch(carry, epoch_key):
        if batch_size == n:  # full batch: no shuffling or gathering needed
            carry, loss = step(carry, (x, y))
            return carry, loss
        order = jax.random.permutation(epoch_key, n)[: steps * batch_size].reshape(steps, batch_size)
        carry, losses = jax.lax.scan(lambda c, idx: step(c, (x[idx], y[idx])), carry, order)
        return carry, losses.mean()

    (head, _), losses = jax.lax.scan(
        epoch, (head, optimizer.init(head)), jax.random.split(shuffle_key, num_epochs)
    )
    return head, losses


@jax.jit
def _accuracy(head: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(_logits(head, x), axis=-1) == y)


def _check_split(name: str, x, y) -> tuple[jax.Array, jax.Array]:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError(f"{name} needs features [N > 0, F] and labels [N], got {x.shape} and {y.shape}.")
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)


@jax.jit
def _standardized(train_x: jax.Array, test_x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Both [N, F] and [M, F] z-scored with the train split's statistics."""
    mean, std = jnp.mean(train_x, axis=0), jnp.std(train_x, axis=0)
    scale = jnp.where(std > 1e-6, 1.0 / jnp.maximum(std, 1e-6), 0.0)
    return (train_x - mean) * scale, (test_x - mean) * scale


@functools.partial(jax.jit, static_argnames=("lr", "weight_decay"))
def _streamed_step(head, opt_state, x, y, *, lr, weight_decay):
    """One AdamW step on a minibatch x [B, F], y [B]; also its loss and correct count (before the step)."""
    optimizer = optax.adamw(lr, weight_decay=weight_decay)
    x = x.reshape(x.shape[0], -1).astype(jnp.float32)
    loss, grads = jax.value_and_grad(_loss)(head, x, y)
    correct = jnp.sum(jnp.argmax(_logits(head, x), axis=-1) == y)
    updates, opt_state = optimizer.update(grads, opt_state, head)
    return optax.apply_updates(head, updates), opt_state, loss, correct


@jax.jit
def _correct(head: dict, x: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    predicted = jnp.argmax(_logits(head, x.reshape(x.shape[0], -1).astype(jnp.float32)), axis=-1)
    return jnp.sum((predicted == y) & mask)


def fit_streamed_probe(
    train_batches: Iterable[tuple[dict, jax.Array]],
    test_batches: Iterable[tuple[dict, jax.Array, jax.Array]],
    *,
    num_classes: int,
    steps_per_epoch: int,
    lr: float = 3e-4,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Trains one linear head per feature kind on a stream of minibatches and scores it on the test stream.

    Args:
      train_batches: `({name: features [B, F_name]}, labels [B])` minibatches, all epochs in a row (the caller
        draws fresh augmentations and a fresh order each epoch); device arrays stay on device.
      test_batches: `({name: features [B, F_name]}, labels [B], mask [B] bool)`, one pass over the test split.
      num_classes: K.
      steps_per_epoch: minibatches per epoch (the train results are those of the last epoch).
      lr, weight_decay: AdamW settings.
      seed: PRNG seed of the heads' init (the head of every kind starts from the same key, as `fit_linear_probe`).

    Returns:
      {name: {"accuracy": top-1 test accuracy, "train_accuracy": mean top-1 accuracy of the last epoch's
      minibatches before each update (as the official), "train_loss": mean cross-entropy of the last epoch}}.
      Held in memory: one minibatch and the heads with their AdamW moments (3 · (F + 1) · K floats per kind).
    """
    init_key = jax.random.split(jax.random.key(seed))[0]
    states: dict[str, list] = {}
    epoch_sums: dict[str, np.ndarray] = {}
    step = 0
    for features, labels in train_batches:
        if step % steps_per_epoch == 0:
            epoch_sums = {name: np.zeros(3) for name in features}  # loss sum, correct, rows
        for name, x in features.items():
            if name not in states:
                head = _init_head(init_key, int(np.prod(x.shape[1:])), num_classes)
                states[name] = [head, optax.adamw(lr, weight_decay=weight_decay).init(head)]
            head, opt_state, loss, correct = _streamed_step(
                *states[name], x, labels, lr=float(lr), weight_decay=float(weight_decay)
            )
            states[name] = [head, opt_state]
            epoch_sums[name] += (float(loss), float(correct), x.shape[0])
        step += 1
    if not states:
        raise ValueError("The train stream yielded no minibatches.")
    correct = {name: 0.0 for name in states}
    total = 0.0
    for features, labels, mask in test_batches:
        for name in states:
            correct[name] += float(_correct(states[name][0], features[name], labels, mask))
        total += float(jnp.sum(jnp.asarray(mask)))  # a replicated scalar: also for multi-host global arrays
    if not total:
        raise ValueError("The test stream yielded no examples.")
    batches_per_epoch = step - (step - 1) // steps_per_epoch * steps_per_epoch
    return {
        name: {
            "accuracy": correct[name] / total,
            "train_accuracy": float(epoch_sums[name][1] / epoch_sums[name][2]),
            "train_loss": float(epoch_sums[name][0] / batches_per_epoch),
        }
        for name in states
    }


def fit_linear_probe(
    train_x,
    train_y,
    test_x,
    test_y,
    *,
    num_classes: int,
    lr: float = 3e-4,
    num_epochs: int = 300,
    batch_size: int | None = None,
    weight_decay: float = 0.0,
    standardize: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """Trains a linear classifier on train features and scores it.

    Args:
      train_x, train_y: features [N, F] and int labels [N] of the training split.
      test_x, test_y: features [M, F] and labels [M] of the split the accuracy is reported on.
      num_classes: K, the classifier's outputs.
      lr, weight_decay: AdamW settings.
      num_epochs: passes over the training features.
      batch_size: minibatch size (reshuffled each epoch, last partial batch dropped); None or >= N: full batch.
      standardize: z-score both splits with the train features' per-feature mean and std (constant features
        stay 0).
      seed: PRNG seed for the head's init and the shuffling; equal inputs and seed give equal results.

    Returns:
      {"accuracy": top-1 test accuracy, "train_accuracy": top-1 accuracy on the training features,
       "train_loss": mean cross-entropy of the last epoch}.
    """
    train_x, train_y = _check_split("train", train_x, train_y)
    test_x, test_y = _check_split("test", test_x, test_y)
    if test_x.shape[1] != train_x.shape[1]:
        raise ValueError(f"train and test features differ in width: {train_x.shape[1]} vs {test_x.shape[1]}.")
    if num_epochs < 1 or (batch_size is not None and batch_size < 1):
        raise ValueError(f"num_epochs and batch_size must be >= 1, got {num_epochs} and {batch_size}.")
    if standardize:
        train_x, test_x = _standardized(train_x, test_x)
    n = train_x.shape[0]
    batch = n if batch_size is None else min(batch_size, n)
    head, losses = _train_head(
        train_x,
        train_y,
        jax.random.key(seed),
        num_classes=int(num_classes),
        lr=float(lr),
        num_epochs=int(num_epochs),
        batch_size=int(batch),
        weight_decay=float(weight_decay),
    )
    return {
        "accuracy": float(_accuracy(head, test_x, test_y)),
        "train_accuracy": float(_accuracy(head, train_x, train_y)),
        "train_loss": float(losses[-1]),
    }


def collect_features(
    batches: Iterable[dict], feature_fns: dict[str, Callable[[np.ndarray], np.ndarray]]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One pass over `{"image", "label", optional "mask"}` batches -> ({name: features [N, F]}, labels [N])."""
    feats: dict[str, list] = {name: [] for name in feature_fns}
    labels = []
    for batch in batches:
        keep = np.asarray(batch["mask"], bool) if "mask" in batch else slice(None)
        for name, fn in feature_fns.items():
            out = np.asarray(fn(batch["image"]))
            feats[name].append(out.reshape(out.shape[0], -1)[keep])
        labels.append(np.asarray(batch["label"])[keep])
    if not labels:
        raise ValueError("The batches function yielded no batches.")
    return {name: np.concatenate(f) for name, f in feats.items()}, np.concatenate(labels)


class LinearProbe:
    """Linear-probe accuracy of encoder features (case study 2; the official `LinearProbing` metric).

    `protocol="augmented"` (the paper's, default): every epoch a fresh shuffle of the train split with the
    run's training augmentation (`data.augmentation`, one view: the SimCLR crop/flip/jitter/grey/blur view for
    ImageNet) flows through the encoder one global minibatch of `batch_size` at a time into `fit_streamed_probe`;
    features stay on the devices. Metrics `eval/linear_probe_accuracy` (no head, the paper's number), `_head`,
    `_pixels`, and `_train_accuracy...`. `protocol="frozen"` (fast): features of the un-augmented splits are
    computed once (eval batches of `eval_batch_size`), held on the host and probed with `fit_linear_probe`;
    metrics `eval/linear_probe_frozen_accuracy...`. The pixel baseline (`include_pixels`, off by default; no
    official metric) does not depend on the params: it is fitted once, at the first run.

    Differences from the official metric: the official feeds the two-view ImageNet training set
    (`DoubleImageNet`) to the probe; here each image gives one augmented view per epoch. The official logs the
    test accuracy after every epoch; here the test split is scored after the last epoch. The official data order
    is torch's sampler shuffle (seed 100 + epoch); here it is the pipeline's (seed, epoch) shuffle, with the last
    partial batch dropped as there.

    Host memory per process (`host_memory_bytes`): augmented, the tf.data batches of one pass,
    PIPELINE_BATCHES · batch_size / processes · H·W·C · 4 bytes; frozen, (N_train + N_test) · 4 bytes times
    (the sum of the modes' feature widths, plus H·W·C with the pixel baseline). A frozen probe above
    `max_host_bytes` is refused when it is built.

    Args: `embed_fn` (`predict.EmbedFn`'s: `(params, images, apply_head)` host numpy, `.rows` on global
    arrays, `.feature_width`), `data_cfg` (config.data), `mesh`, `eval_batch_size`; the rest are
    `config.evals.<name>` settings (`lr`, `num_epochs`, `batch_size`, `weight_decay`, `standardize`, `seed`: see
    `fit_linear_probe`; `modes`: any of ("no_head", "head")).
    """

    NEEDS_LABELS = True  # see evaluators.needs_labels

    def __init__(self, *, embed_fn, data_cfg, mesh, eval_batch_size, protocol=AUGMENTED, modes=("no_head",),
                 include_pixels=False, lr=3e-4, num_epochs=300, batch_size=8192, weight_decay=0.0, standardize=False,
                 max_host_bytes=common.DEFAULT_MAX_HOST_BYTES, weights: tuple[str, ...] | None = None,
                 seed=0):  # fmt: skip
        if data_cfg.num_classes < 2:
            raise ValueError(f"The linear probe needs labelled data (data.num_classes={data_cfg.num_classes}): with one "
                             "class every label is 0 and it scores 1.0 whatever the encoder.")  # fmt: skip
        if protocol not in PROTOCOLS:
            raise ValueError(f"linear_probe protocol={protocol!r}; expected one of {PROTOCOLS}.")
        if protocol == AUGMENTED and standardize:
            raise ValueError("standardize needs the train split's feature statistics: use protocol='frozen'.")
        unknown = [m for m in modes if m not in MODES]
        if unknown:
            raise ValueError(f"Unknown linear-probe modes {unknown}; expected a subset of {MODES}.")
        self.embed_fn, self.data_cfg, self.mesh, self.protocol = embed_fn, data_cfg, mesh, protocol
        self.modes, self.include_pixels, self.batch_size = tuple(modes), include_pixels, batch_size
        self.eval_batch_size, self.num_epochs, self.standardize, self.seed = eval_batch_size, num_epochs, standardize, seed
        self.weights = common.check_weights(weights)
        self.fit_kwargs = dict(num_classes=data_cfg.num_classes, lr=lr, weight_decay=weight_decay, seed=seed)
        self._pixel_result: dict[str, float] | None = None
        if protocol == FROZEN:
            needed = self.host_memory_bytes()
            if needed > max_host_bytes:
                raise ValueError(
                    f"The frozen linear probe would hold {needed / 2**30:.1f} GiB of features on the host (limit "
                    f"max_host_bytes={max_host_bytes / 2**30:.1f} GiB): use protocol='augmented' (streamed), drop "
                    "include_pixels, or raise max_host_bytes."
                )
        else:
            self.view_cfg = data_cfg.copy_and_resolve_references()
            self.view_cfg.num_views = 1
            parallel.check_batch_size(batch_size, mesh)

    def host_memory_bytes(self) -> int:
        """Peak host RAM of one run per process, in bytes (the formula in the class docstring)."""
        if self.protocol == AUGMENTED:
            return common.pipeline_bytes(self.data_cfg, self.batch_size)
        rows = data.num_examples(self.data_cfg, "train") + data.num_examples(self.data_cfg, "test")
        shape, views = data.image_shape(self.data_cfg), self.data_cfg.num_views
        width = sum(self.embed_fn.feature_width(shape, views, m == "head") for m in self.modes)
        return 4 * rows * (width + (int(np.prod(shape)) if self.include_pixels else 0))

    def run(self, params, step) -> Iterator[tuple[str, float]]:
        del step
        heads = {mode: mode == "head" for mode in self.modes}
        if self.include_pixels and self._pixel_result is None:
            heads["pixels"] = None  # params-independent: fitted once, in the first run's pass
        fit = self._frozen if self.protocol == FROZEN else self._streamed
        results = fit(params, heads)
        if self.include_pixels:
            self._pixel_result = results.pop("pixels", self._pixel_result)
            results["pixels"] = self._pixel_result
        yield from metrics(results, self.protocol)

    def compile_targets(self) -> dict:
        """{name: (jitted function, abstract row inputs)} of the functions one run compiles (scale rehearsal)."""
        num = self.eval_batch_size if self.protocol == FROZEN else self.batch_size
        shape = data.image_shape(self.data_cfg)
        return {f"embed_{mode}": self.embed_fn.compile_target(num, shape, mode == "head") for mode in self.modes}

    # -- frozen: features of the un-augmented splits, held on the host -----------------------------------------

    def _frozen(self, params, heads: dict) -> dict[str, dict[str, float]]:
        """heads: {name: apply_head, or None for the pixels}."""
        if not heads:
            return {}
        fns = {name: (lambda x: x) if head is None else functools.partial(self.embed_fn, params, apply_head=head)
               for name, head in heads.items()}  # fmt: skip
        split = lambda s: data.eval_iterator(self.data_cfg, split=s, batch_size=self.eval_batch_size)  # noqa: E731
        train_x, train_y = collect_features(split("train"), fns)
        test_x, test_y = collect_features(split("test"), fns)
        return {
            name: fit_linear_probe(train_x[name], train_y, test_x[name], test_y, num_epochs=self.num_epochs,
                                   batch_size=self.batch_size, standardize=self.standardize, **self.fit_kwargs)
            for name in fns
        }  # fmt: skip

    # -- augmented: fresh views streamed through the encoder, nothing held --------------------------------------

    def _row_fns(self, params, heads: dict) -> dict:
        flat = lambda x: x.reshape(x.shape[0], -1)  # noqa: E731
        return {name: flat if head is None else functools.partial(self.embed_fn.rows, params, apply_head=head)
                for name, head in heads.items()}  # fmt: skip

    def _train_stream(self, fns: dict, steps_per_epoch: int):
        batches = data.train_iterator(self.view_cfg, batch_size=self.batch_size, seed=self.seed,
                                      process_index=jax.process_index(), process_count=jax.process_count())  # fmt: skip
        for _ in range(self.num_epochs * steps_per_epoch):
            batch = parallel.global_batch(next(batches), self.mesh)
            yield {name: fn(batch["image"]) for name, fn in fns.items()}, batch["label"]

    def _test_stream(self, fns: dict):
        for batch in common.split_batches(self.data_cfg, "test", self.eval_batch_size, self.mesh):
            yield {name: fn(batch["image"]) for name, fn in fns.items()}, batch["label"], batch["mask"]

    def _streamed(self, params, heads: dict) -> dict[str, dict[str, float]]:
        if not heads:
            return {}
        fns = self._row_fns(params, heads)
        steps = data.steps_per_epoch(self.view_cfg, batch_size=self.batch_size)  # the remainder dropped
        return fit_streamed_probe(self._train_stream(fns, steps), self._test_stream(fns), steps_per_epoch=steps,
                                  **self.fit_kwargs)  # fmt: skip
