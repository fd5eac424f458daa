"""Forward+backward throughput (images/s) of the models of a config, one line per model.

    PYTHONPATH=. python experiments/bench_models.py --config configs/joint_cifar10.py --batch-size 8

Each model runs a jitted `value_and_grad` of a squared-error loss in training mode (dropout on), on random
inputs and random params (initialisation is not what is measured). Compilation is excluded; the figure is the
median over `--steps` timed steps. On a shared machine treat it as indicative.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from lzn_jax import config_files, convert, models
from lzn_jax.models import label_anchors


def _random_params(model, args, seed: int):
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(0.02 * rng.standard_normal(s.shape), s.dtype), shapes)


def _batched_inputs(model, config, batch_size: int, seed: int) -> tuple:
    """The model's example inputs at `batch_size`, filled with t ~ U(0.05, 1) and N(0, 1) data."""
    rng = np.random.default_rng(seed)

    def fill(example):
        if example is None:
            return None
        if example.ndim == 1:
            return jnp.asarray(rng.uniform(0.05, 1.0, (batch_size,)), jnp.float32)
        return jnp.asarray(rng.standard_normal((batch_size, *example.shape[1:])), jnp.float32)

    return tuple(fill(a) for a in model.example_inputs(config.data.image_size, config.data.num_channels))


def _loss_fn(model, args):
    """Squared output norm: a loss whose backward pass touches every parameter the forward pass used."""

    def loss(params, rng):
        out = model.apply({"params": params}, *args, train=True, rngs={"dropout": rng})
        return jnp.mean(jnp.square(out.astype(jnp.float32)))

    return loss


def bench(section: str, model, config, batch_size: int, steps: int) -> str:
    args = _batched_inputs(model, config, batch_size, seed=1)
    params = _random_params(model, args, seed=0)
    step = jax.jit(jax.value_and_grad(_loss_fn(model, args)))
    key = jax.random.key(0)
    jax.block_until_ready(step(params, key))  # compile
    times = []
    for i in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(step(params, jax.random.fold_in(key, i)))
        times.append(time.perf_counter() - start)
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    seconds = statistics.median(times)
    return (
        f"{section}: {type(model).__name__} ({count / 1e6:.1f}M params) {batch_size / seconds:.1f} images/s "
        f"forward+backward (batch {batch_size}, {seconds * 1e3:.0f} ms/step, {jax.default_backend()}, "
        f"{jnp.dtype(model.dtype).name})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/joint_cifar10.py", help="config file whose models to time")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model (after one compile step)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
    parser.add_argument("--models", default="encoder,decoder", help="comma-separated config sections to time")
    args = parser.parse_args()
    config = config_files.load(args.config)
    for section in args.models.split(","):
        if section not in config:
            raise SystemExit(f"--models: {args.config} has no {section!r} section.")
        model = models.build(dict(config[section], dtype=args.dtype))
        if isinstance(model, label_anchors.LabelAnchors):
            raise SystemExit("--models: label anchors are a table lookup; there is nothing to time.")
        print(bench(section, model, config, args.batch_size, args.steps), flush=True)


if __name__ == "__main__":
    main()
