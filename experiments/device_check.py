r"""What one accelerator does with lzn_jax: the zoning kernel and each paper model's train step, timed.

Run it through `experiments/device_check.sh` (which brings the small wheels a bare GPU machine lacks):

    bash experiments/device_check.sh            # on the accelerator: paper shapes
    bash experiments/device_check.sh --tiny     # on a CPU, about 3 minutes of one core: tiny shapes, the same code

Prints, one line each, flushed as it goes (a run cut short keeps what it printed):
1. the zoning kernel step at case-study-2 shapes per device: 1024 rows against 8192 anchors (a 128-device run of
   batch 8192, anchors gathered), D = 256, 20 forward + 20 reverse Euler steps, loss forward + backward; model
   FLOPs 12·B·N·D per kernel evaluation (4 forward, 8 backward, as experiments/bench_zoning.py counts them);
2. images/s of each paper model's train step at its per-GPU batch (the paper's global batch / its GPU count),
   float32 and bfloat16 compute, through `train.build` and `train_state.make_train_step` on a 1-device mesh
   (the zoning kernel then zones each step's rows against that device's rows only: its share of the step is a
   few percent, see docs/scaling.md), and % of the chip's dense peak, from XLA's FLOP count of the step.

TensorFlow stays out of this path: `lzn_jax.train` imports it only inside the training loop, and batches are
random arrays of the dataset's shapes (`data.batch_spec`), not tf.data pipelines.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

from chips import CHIPS, chip_of  # noqa: E402
from results import load_config  # noqa: E402  (standard library only: safe on a bare GPU machine)
from lzn_jax import configlib, data, losses, parallel, train, train_state, zoning  # noqa: E402

# The paper's global batch is in each config; its GPU count per case study (as experiments/scale_rehearsal.py).
# AFHQ-Cat, CelebA-HQ and LSUN-Bedroom share one network (configs/common.py HQ256_TRUNK): gen_afhq_cat stands
# for all three.
MODELS = {"gen_cifar10": 16, "joint_cifar10": 16, "gen_afhq_cat": 32, "repr_imagenet": 128}
TINY_MODELS = ("gen_cifar10", "repr_imagenet")  # one NCSN++ pair and one ResNet: the two code paths
KERNEL = dict(rows=1024, anchors=8192, dim=256, steps=20)
TINY_KERNEL = dict(rows=64, anchors=256, dim=16, steps=2)


def log(line: str) -> None:
    print(line, flush=True)


def timed(run, steps: int) -> float:
    """Median seconds of `run()` over `steps` calls, after one warm-up (compiling) call."""
    jax.block_until_ready(run())
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def peak_flops(dtype: str):
    chip = chip_of(jax.devices()[0].device_kind)
    return (chip, CHIPS[chip][dtype]) if chip else (None, None)


def percent(flops_per_s: float, dtype: str) -> str:
    chip, peak = peak_flops(dtype)
    return f"{100 * flops_per_s / peak:.1f}% of {chip} {dtype} peak" if peak else "no peak known for this chip"


def kernel_check(rows: int, anchors: int, dim: int, steps: int, repeats: int) -> None:
    """One device's case-study-2 kernel work: its rows flow against every anchor of the global batch."""
    rng = np.random.default_rng(0)
    view1 = jnp.asarray(rng.normal(size=(anchors, dim)), jnp.float32)
    view2 = view1 + 0.5 * jnp.asarray(rng.normal(size=(anchors, dim)), jnp.float32)
    prior = 0.45 * jnp.asarray(rng.normal(size=(rows, dim)), jnp.float32)

    def loss(view1, view2, prior):
        latent = zoning.latents(view1, prior, points=view1[:rows], num_steps=steps, solver="euler")
        _, log_probs = zoning.assign(view2, latent, num_steps=steps, targets=jnp.arange(rows), solver="euler")
        return losses.representation_loss(log_probs)["total"]

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    seconds = timed(lambda: step(view1, view2, prior), repeats)
    flops = 12 * rows * anchors * dim * 2 * steps
    log(f"kernel: {rows} rows x {anchors} anchors, D={dim}, {steps}+{steps} Euler steps, fwd+bwd: "
        f"{seconds * 1e3:.3g} ms/step, {flops / seconds / 1e12:.3g} TFLOP/s, {percent(flops / seconds, 'float32')}")  # fmt: skip


def model_check(name: str, config, batch_size: int, dtype: str, repeats: int) -> None:
    """The config's train step at `batch_size` on one device, built as `main` builds it."""
    config = configlib.override(config, **{"batch_size": batch_size, "dtype": dtype, "mesh.data": 1, "mesh.fsdp": False})
    configlib.check(config)
    mesh = parallel.make_mesh(1, 1)
    built = train.build(config, mesh)
    step = train_state.make_train_step(built.task, built.optimizer, mesh, built.shardings)
    rng = np.random.default_rng(0)
    spec = data.batch_spec(config.data, batch_size)
    batch = {k: rng.uniform(-1, 1, v.shape).astype(v.dtype) if v.ndim > 1 else rng.integers(0, config.num_classes, v.shape).astype(v.dtype)
             for k, v in spec.items()}  # fmt: skip
    with jax.set_mesh(mesh):
        state = built.fresh_state(jax.random.key(0))
        batch = parallel.global_batch(batch, mesh)
        compiled = step.lower(state, batch).compile()  # compiled once: timed below, and its FLOPs counted
        cost = compiled.cost_analysis()
        flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost).get("flops", 0.0))
        carried = {"state": state}  # the step donates its state: feed each step the previous one's

        def run():
            carried["state"], metrics = compiled(carried["state"], batch)
            return metrics

        seconds = timed(run, repeats)
    log(f"{name} {dtype}: batch {batch_size}, {seconds * 1e3:.1f} ms/step, {batch_size / seconds:.1f} images/s, "
        f"{flops / seconds / 1e12:.3g} TFLOP/s (XLA count), {percent(flops / seconds, dtype)}")  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true",
                        help="tiny shapes: the configs' :runlocal forms, one-level NCSN++ on 8x8 images (CPU).")
    parser.add_argument("--models", default=None, help=f"comma-separated configs to time (default {','.join(MODELS)}; "
                        f"--tiny: {','.join(TINY_MODELS)}).")  # fmt: skip
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (default 10, --tiny 1).")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.tiny else 10)
    device = jax.devices()[0]
    log(f"JAX {jax.__version__}, {jax.device_count()} x {device.device_kind} ({device.platform})")
    kernel_check(**(TINY_KERNEL if args.tiny else KERNEL), repeats=repeats)
    for name in args.models.split(",") if args.models else (TINY_MODELS if args.tiny else MODELS):
        config = load_config(name, "runlocal" if args.tiny else None)
        if args.tiny and config.encoder.get("name") != "resnet":  # runlocal's ResNet-10 needs its 32 px
            config.data.image_size = 8  # and one-level NCSN++ trunks: the check's code path at half the compile
            for section in ("encoder", "decoder"):
                config[section].ch_mult = (1,)
        batch_size = 2 if args.tiny else config.batch_size // MODELS[name]
        for dtype in args.dtypes.split(","):
            try:
                model_check(name, config, batch_size, dtype, repeats)
            except Exception as error:  # one model failing must not hide the others' numbers
                log(f"{name} {dtype}: FAILED {type(error).__name__}: {str(error)[:300]}")
    log("done")


if __name__ == "__main__":
    main()
