"""Linear probing on sklearn digits pixels, and the evaluator's metric names."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from support import load_config

from lzn_jax import data, parallel
from lzn_jax.evaluators import linear_probe


@pytest.fixture(scope="module")
def digits():
    """Digits as [-1, 1] images [N, 8, 8, 1], shuffled, split 1200 train / 597 test."""
    data = load_digits()
    images = (data.images / 16.0 * 2.0 - 1.0).astype(np.float32)[..., None]
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], data.target[order].astype(np.int32)
    return (images[:1200], labels[:1200]), (images[1200:], labels[1200:])


def _flat(split):
    images, labels = split
    return images.reshape(len(images), -1), labels


def test_probe_on_pixels_is_accurate_and_deterministic(digits):
    train, test = _flat(digits[0]), _flat(digits[1])
    result = linear_probe.fit_linear_probe(*train, *test, num_classes=10, batch_size=64, seed=3)
    assert result["accuracy"] > 0.9 and result["train_accuracy"] > 0.9  # chance is 0.1
    assert result["train_loss"] < 0.5
    assert linear_probe.fit_linear_probe(*train, *test, num_classes=10, batch_size=64, seed=3) == result
    other_seed = linear_probe.fit_linear_probe(*train, *test, num_classes=10, batch_size=64, seed=4)
    assert other_seed != result and other_seed["accuracy"] > 0.9


@pytest.mark.slow  # 10 s cold on 2 cores (fast-tier budget)
def test_full_batch_probe_learns_and_weight_decay_changes_it(digits):
    train, test = _flat(digits[0]), _flat(digits[1])
    full = linear_probe.fit_linear_probe(*train, *test, num_classes=10)  # the defaults: 300 full-batch steps
    assert full["accuracy"] > 0.7  # well above chance (0.1), though 300 Adam steps at lr 3e-4 do not converge
    few = linear_probe.fit_linear_probe(*train, *test, num_classes=10, num_epochs=10)
    assert few["train_loss"] > full["train_loss"]
    decayed = linear_probe.fit_linear_probe(*train, *test, num_classes=10, weight_decay=10.0)
    assert decayed["train_loss"] > full["train_loss"]


def test_standardized_probe_ignores_feature_scales_the_raw_probe_underfits(digits):
    """Features at scales from 1e-3 to 1e2 (plus a constant column): the raw probe underfits them, the
    standardized probe scores exactly as on the same features z-scored by hand."""
    (train_x, train_y), (test_x, test_y) = _flat(digits[0]), _flat(digits[1])
    scales = np.logspace(-3, 2, train_x.shape[1]).astype(np.float32)
    scales = np.random.default_rng(0).permutation(scales)
    skewed_train, skewed_test = train_x * scales + 5.0, test_x * scales + 5.0
    kwargs = dict(num_classes=10, batch_size=64, num_epochs=30, lr=1e-3, seed=1)
    raw = linear_probe.fit_linear_probe(skewed_train, train_y, skewed_test, test_y, **kwargs)
    standardized = linear_probe.fit_linear_probe(skewed_train, train_y, skewed_test, test_y, standardize=True, **kwargs)
    mean, std = train_x.mean(0), train_x.std(0)
    scale = np.where(std > 1e-6, 1.0 / np.maximum(std, 1e-6), 0.0)  # digits have always-blank pixels
    by_hand = linear_probe.fit_linear_probe((train_x - mean) * scale, train_y, (test_x - mean) * scale, test_y, **kwargs)
    assert standardized["accuracy"] == pytest.approx(by_hand["accuracy"], abs=2 / len(test_y))
    assert standardized["train_accuracy"] > 0.9 and standardized["accuracy"] > 0.9
    assert raw["train_accuracy"] < standardized["train_accuracy"] - 0.05


def test_probe_rejects_bad_shapes():
    x, y = np.zeros((4, 3)), np.zeros(4, int)
    with pytest.raises(ValueError, match="train needs"):
        linear_probe.fit_linear_probe(x, y[:3], x, y, num_classes=2)
    with pytest.raises(ValueError, match="width"):
        linear_probe.fit_linear_probe(x, y, np.zeros((4, 5)), y, num_classes=2)


class FakeEmbed:
    """An `embed_fn` (predict.EmbedFn's signature) that needs no network: "no_head" features are the pixels
    times params (informative while params != 0), "head" features a constant (uninformative)."""

    def __init__(self):
        self.calls = []

    def __call__(self, params, images, apply_head):
        self.calls.append(apply_head)
        flat = np.asarray(images).reshape(len(images), -1)
        return params * flat if not apply_head else np.ones((len(images), 2), np.float32)

    def feature_width(self, image_shape, num_views, apply_head):
        return 2 if apply_head else int(np.prod(image_shape))


@pytest.mark.slow  # 8 s cold on 2 cores (fast-tier budget)
def test_frozen_probe_yields_each_mode_and_probes_pixels_once():
    """The evaluator takes its embedding function (big_vision's predict_fn): here one with known features, on the
    real digits pipeline (1437 train, 360 test images of 16x16)."""
    embed = FakeEmbed()
    data_cfg = load_config("digits_joint").data
    evaluator = linear_probe.LinearProbe(
        embed_fn=embed, data_cfg=data_cfg, mesh=parallel.make_mesh(-1), eval_batch_size=256, protocol="frozen",
        modes=("no_head", "head"), include_pixels=True, batch_size=64, num_epochs=100,
    )  # fmt: skip
    results = dict(evaluator.run(1.0, 0))
    assert set(results) == {
        f"eval/linear_probe_frozen_{kind}{suffix}"
        for kind in ("accuracy", "train_accuracy")
        for suffix in ("", "_head", "_pixels")
    }
    assert results["eval/linear_probe_frozen_accuracy"] > 0.9
    assert results["eval/linear_probe_frozen_accuracy_head"] < 0.3  # constant features: about the majority class
    assert results["eval/linear_probe_frozen_accuracy_pixels"] > 0.9
    num_batches = -(-1437 // 256) + -(-360 // 256)
    assert len(embed.calls) == 2 * num_batches
    # params 0 make the encoder's features all zero: its probe falls to about the majority class, while the
    # pixel baseline probes the images themselves, whatever the params (and is not refitted).
    again = dict(evaluator.run(0.0, 1))
    assert again["eval/linear_probe_frozen_accuracy"] < 0.3
    assert again["eval/linear_probe_frozen_accuracy_pixels"] == results["eval/linear_probe_frozen_accuracy_pixels"]
    assert len(embed.calls) == 4 * num_batches
    assert evaluator.host_memory_bytes() == 4 * (1437 + 360) * (256 + 2 + 256)  # no-head, head and pixel features


def test_evaluator_rejects_unknown_modes_and_unlabeled_data():
    labelled, unlabeled = data.default_config(), data.default_config()
    unlabeled.num_classes = 1
    with pytest.raises(ValueError, match="latent"):
        linear_probe.LinearProbe(embed_fn=None, data_cfg=labelled, mesh=None, eval_batch_size=8, modes=("latent",))
    with pytest.raises(ValueError, match=r"needs labelled data \(data.num_classes=1\)"):  # it scored 1.0
        linear_probe.LinearProbe(embed_fn=None, data_cfg=unlabeled, mesh=None, eval_batch_size=8)


def _epoch_minibatches(x, y, *, seed, num_epochs, batch_size):
    """The minibatches fit_linear_probe draws (its key split, per-epoch permutation, last partial batch dropped)."""
    import jax

    shuffle_key = jax.random.split(jax.random.key(seed))[1]
    steps = len(x) // batch_size
    for epoch_key in jax.random.split(shuffle_key, num_epochs):
        order = np.asarray(jax.random.permutation(epoch_key, len(x)))[: steps * batch_size].reshape(steps, batch_size)
        for idx in order:
            yield {"pixels": x[idx]}, y[idx]


@pytest.mark.slow  # 15 s cold on 2 cores (fast-tier budget)
def test_streamed_probe_takes_the_same_adamw_steps_as_the_frozen_probe(digits):
    """Fed the frozen probe's own minibatches, the streamed probe (the paper's protocol, one minibatch at a time)
    ends with the same head: a streamed step that differed from the frozen one (optimizer, init, loss) shows here."""
    train, test = _flat(digits[0]), _flat(digits[1])
    kwargs = dict(num_classes=10, lr=1e-3, seed=5)
    frozen = linear_probe.fit_linear_probe(*train, *test, num_epochs=3, batch_size=100, **kwargs)
    test_stream = [({"pixels": test[0]}, test[1], np.ones(len(test[1]), bool))]
    streamed = linear_probe.fit_streamed_probe(
        _epoch_minibatches(*train, seed=5, num_epochs=3, batch_size=100), test_stream, steps_per_epoch=12, **kwargs
    )["pixels"]
    assert streamed["accuracy"] == pytest.approx(frozen["accuracy"], abs=1 / len(test[1]))
    assert streamed["train_loss"] == pytest.approx(frozen["train_loss"], rel=1e-4)


def test_streamed_probe_keeps_no_minibatch_so_its_memory_does_not_grow_with_the_data(digits):
    """Every minibatch is released once the next one arrives: memory is one minibatch, whatever the dataset size
    (a probe that accumulated features, as the frozen protocol does, keeps them all alive)."""
    import weakref

    (x, y), test = _flat(digits[0]), _flat(digits[1])
    alive = []

    def stream():
        for start in range(0, 1200, 50):
            features = x[start : start + 50].copy()
            alive.append(weakref.ref(features))
            yield {"pixels": features}, y[start : start + 50]
            # No gc.collect(): a dropped minibatch must be freed by reference counting alone (stricter), and a full
            # collection took about 2 s per minibatch in an xdist worker holding the suite's objects (61 s in all).
            assert sum(ref() is not None for ref in alive) <= 2  # this minibatch and, at most, the one before

    result = linear_probe.fit_streamed_probe(
        stream(), [({"pixels": test[0]}, test[1], np.ones(len(test[1]), bool))], num_classes=10, steps_per_epoch=24,
        lr=1e-2,
    )["pixels"]
    assert len(alive) == 24 and result["accuracy"] > 0.8


def test_streamed_probe_scores_only_unmasked_test_rows(digits):
    train, (test_x, test_y) = _flat(digits[0]), _flat(digits[1])
    batches = list(_epoch_minibatches(*train, seed=0, num_epochs=2, batch_size=100))
    padded = ({"pixels": np.concatenate([test_x, np.zeros_like(test_x[:3])])}, np.concatenate([test_y, [0, 0, 0]]),
              np.arange(len(test_y) + 3) < len(test_y))  # fmt: skip
    plain = ({"pixels": test_x}, test_y, np.ones(len(test_y), bool))
    kwargs = dict(num_classes=10, steps_per_epoch=12, lr=1e-3)
    with_padding = linear_probe.fit_streamed_probe(iter(batches), [padded], **kwargs)
    assert with_padding == linear_probe.fit_streamed_probe(iter(batches), [plain], **kwargs)
