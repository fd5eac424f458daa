r"""Benchmarks the latent zoning kernel on a case-study-2 training step (no network).

One step = forward Euler flow of view-1 anchors (prior × 0.45) + reverse Euler flow over view-2 anchors with
the own-column log-probabilities + the case-study-2 loss, forward and backward (gradients for both views):
2 × 20 kernel evaluations. Prints one line per shape: seconds per step, GFLOP/s, % of this machine's measured
float32 matmul throughput, and XLA's peak live memory for the compiled step.

    python experiments/bench_zoning.py                       # the default shapes
    python experiments/bench_zoning.py --shapes 2048x256 --repeats 5
    python experiments/bench_zoning.py --official-repo /path/to/latent-zoning-networks   # also time the official
    python experiments/bench_zoning.py --shapes 256x128 --official-repo REPO --record bench_zoning_official

Also prints, for shapes up to 512 rows, the float32 loss's error relative to the float64 loss on the same inputs
(with --official-repo, the official code's too).
Writes docs/results/bench_zoning.json. The official PyTorch timings are measured only with --official-repo;
otherwise the figures quoted in issue #2 are printed as quotations, with their source.

FLOPs counted are the model FLOPs of the attention: 4·B·N·D per kernel evaluation forward (logits and
weighted sum) and 8·B·N·D backward, as for flash attention; recomputation is not counted.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import resource
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from lzn_jax import losses, zoning

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results  # noqa: E402  (experiments/results.py)

DEFAULT_SHAPES = ("256x128", "512x256", "2048x256", "16384x256")
# Quoted, not measured here: the official float32 code's seconds per step on the 2-core development machine.
OFFICIAL_QUOTED = {"256x128": "11–13", "512x256": "102"}
OFFICIAL_SOURCE = "quoted from issue #2 (lzn_jax issue tracker), official f32 code on the same 2-core machine"
PRECISION_MAX_BATCH = 512  # the float64 reference step is slow beyond this


def step_loss(num_steps, block_size):
    """(view1, view2, prior) -> the case-study-2 loss after 20 + 20 Euler steps: one kernel step."""

    def loss(view1, view2, prior):
        lat = zoning.latents(view1, prior, num_steps=num_steps, block_size=block_size)
        own = jnp.arange(view1.shape[0])
        _, log_probs = zoning.assign(view2, lat, num_steps=num_steps, targets=own, block_size=block_size)
        return losses.representation_loss(log_probs)["total"]

    return loss


def step_fn(num_steps, block_size):
    return jax.jit(jax.value_and_grad(step_loss(num_steps, block_size), argnums=(0, 1)))


def float32_error(batch, dim, num_steps, block_size):
    """|loss in float32 − loss in float64| / |loss in float64|, same inputs."""
    loss = jax.jit(step_loss(num_steps, block_size))
    with jax.enable_x64(True):
        exact = float(loss(*inputs(batch, dim, dtype=np.float64)))
    return abs(float(loss(*inputs(batch, dim))) - exact) / abs(exact)


def inputs(batch, dim, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    view1 = rng.normal(size=(batch, dim))
    view2 = view1 + 0.5 * rng.normal(size=(batch, dim))
    prior = 0.45 * rng.normal(size=(batch, dim))
    return [jnp.asarray(x, dtype) for x in (view1, view2, prior)]


def time_call(fn, args, repeats):
    jax.block_until_ready(fn(*args))  # compile + warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak_gflops(size=2048, repeats=5):
    """Measured float32 matmul throughput of this machine (the roofline the kernel is judged against)."""
    a, b = (jnp.asarray(np.random.default_rng(i).normal(size=(size, size)), jnp.float32) for i in (0, 1))
    matmul = jax.jit(functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST))
    return 2 * size**3 / time_call(matmul, (a, b), repeats) / 1e9


def peak_live_bytes(fn, args):
    """XLA's live-memory bound for the compiled step: temporaries + arguments + outputs."""
    stats = fn.lower(*args).compile().memory_analysis()
    return stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes


def model_flops(batch, dim, num_steps):
    return 12 * batch * batch * dim * 2 * num_steps


def load_official_flow(repo):
    """The official EulerLatentFlow from a checkout of microsoft/latent-zoning-networks (needs torch)."""
    import torch  # noqa: F401  (only for this comparison)

    package = types.ModuleType("lzn.latent_flow")
    package.__path__ = [f"{repo}/lzn/latent_flow"]
    sys.modules["lzn.latent_flow"] = package
    for name in ("latent_flow", "euler_latent_flow"):
        spec = importlib.util.spec_from_file_location(f"lzn.latent_flow.{name}", f"{repo}/lzn/latent_flow/{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module.EulerLatentFlow


def official_step(repo, batch, dim, num_steps, dtype=np.float32):
    """The official flow's case-study-2 step, forward and backward, on `inputs(batch, dim)` in `dtype`.

    Returns (loss, seconds)."""
    import torch

    flow_cls = load_official_flow(repo)

    class Prior:  # the official Gaussian prior's batch pdf
        @staticmethod
        def get_batch_unnormalized_pdf(x):
            x = -0.5 * x.square().sum(dim=2)
            return torch.exp(x - torch.max(x, dim=1).values[:, None])

    trainer = types.SimpleNamespace(prior=Prior())
    view1, view2, prior = (torch.tensor(np.asarray(x), requires_grad=True) for x in inputs(batch, dim, dtype=dtype))
    start = time.perf_counter()
    flow = flow_cls(trainer)
    lat = flow(full_encoded=view1, encoded=view1, prior_data=prior, num_steps=num_steps)
    _, pdfs = flow(reverse=True, full_encoded=view2, initial_point=lat, num_steps=num_steps)
    probs = torch.stack(pdfs)
    probs = probs / probs.sum(2, keepdim=True)
    own = torch.arange(batch)
    loss = -torch.log(probs[int(num_steps * 0.2):, own, own].max(0)[0]).mean()
    loss.backward()
    return float(loss), time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="BATCHxDIM, e.g. 2048x256")
    parser.add_argument("--steps", type=int, default=20, help="ODE steps per flow (official: 20)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=None, help="anchors per tile (default: automatic)")
    parser.add_argument("--official-repo", default=None, help="also time the official PyTorch flow (needs torch)")
    parser.add_argument("--record", default="bench_zoning", help="writes docs/results/<record>.json")
    args = parser.parse_args()

    peak = matmul_peak_gflops()
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}   measured f32 matmul: {peak:.1f} GFLOP/s")
    rows = []
    for shape in args.shapes:
        batch, dim = (int(v) for v in shape.split("x"))
        fn = step_fn(args.steps, args.block_size)
        data = inputs(batch, dim)
        live = peak_live_bytes(fn, data)
        seconds = time_call(fn, data, args.repeats)
        gflops = model_flops(batch, dim, args.steps) / seconds / 1e9
        row = dict(batch=batch, dim=dim, seconds_per_step=seconds, gflops=gflops, percent_of_matmul_peak=100 * gflops / peak,
                   peak_live_mib=live / 2**20)  # fmt: skip
        line = (
            f"B={batch:6d} D={dim:4d}  {seconds:9.4f} s/step  {gflops:8.1f} GFLOP/s  {100 * gflops / peak:5.1f}% of "
            f"matmul peak  peak live {live / 2**20:8.1f} MiB"
        )
        if batch <= PRECISION_MAX_BATCH:
            row["float32_relative_loss_error"] = float32_error(batch, dim, args.steps, args.block_size)
            line += f"  f32 loss error {row['float32_relative_loss_error']:.1e}"
        if args.official_repo and batch <= 1024:
            official_loss, official = official_step(args.official_repo, batch, dim, args.steps)
            row["official_measured_seconds_per_step"] = official
            line += f"  official measured: {official:.2f} s/step = {official / seconds:.0f}x slower"
            if batch <= PRECISION_MAX_BATCH:
                exact, _ = official_step(args.official_repo, batch, dim, args.steps, dtype=np.float64)
                row["official_float32_relative_loss_error"] = abs(official_loss - exact) / abs(exact)
                line += f", its f32 loss error {row['official_float32_relative_loss_error']:.1e}"
        elif shape in OFFICIAL_QUOTED:
            row["official_quoted_seconds_per_step"] = OFFICIAL_QUOTED[shape]
            line += f"  (official f32, quoted: {OFFICIAL_QUOTED[shape]} s/step)"
        rows.append(row)
        print(line, flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"process peak RSS: {rss:.0f} MiB")
    if not args.official_repo:
        print(f"quoted official figures: {OFFICIAL_SOURCE}")
    results.write(args.record, {"matmul_peak_gflops": peak, "steps_per_flow": args.steps, "shapes": rows,
                                   "process_peak_rss_mib": rss, "official_quoted_source": OFFICIAL_SOURCE})  # fmt: skip


if __name__ == "__main__":
    main()
