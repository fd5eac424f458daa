r"""Memory per device of the sharded zoning kernel versus the anchors of a global batch (docs/scaling.md).

Compiles — without running — the case-study-2 kernel step as the train step runs it: under `jax.shard_map` over
a `data` axis of forced CPU devices, each device holds B / devices rows, all-gathers the N = B anchors of both
views, flows its rows forward (20 Euler steps) and back (20 steps, own-column log-probabilities), and takes the
gradients of the loss for both views. XLA's `memory_analysis()` of the compiled SPMD program is per device:
arguments + outputs + temporaries (the peak of live buffers XLA plans). Printed next to it, the kernel's tile:
query rows per tile × N logits in float32 (`config.zoning.block_size` rows; 0 = automatic, 2²⁴ / N rows).

    python experiments/zoning_memory.py                         # the table of docs/scaling.md
    python experiments/zoning_memory.py --devices 8 --anchors 16384 65536 --block-sizes 0 64

Measured on CPU (XLA:CPU's buffer assignment); on GPU/TPU the same buffers are planned, with different padding
and fusion, so take the figures as estimates to within tens of percent.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=8, help="devices along the data axis (forced CPU devices)")
    parser.add_argument("--anchors", type=int, nargs="+", default=[4096, 16384, 65536, 262144],
                        help="anchors per global batch N (= global batch size)")  # fmt: skip
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[0, 64],
                        help="config.zoning.block_size values (0 = automatic)")  # fmt: skip
    parser.add_argument("--dim", type=int, default=256, help="latent dimension D (repr_imagenet: 256)")
    parser.add_argument("--steps", type=int, default=20, help="Euler steps per flow")
    return parser.parse_args()


def main():
    args = parse_args()
    # XLA reads the device count once, when the backend starts: set it before importing jax.
    flag = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    import jax

    from lzn_jax import losses, parallel, zoning

    mesh = parallel.make_mesh(args.devices)
    rows = jax.sharding.PartitionSpec(parallel.DATA)
    mib = 2**20
    print(f"{args.devices} devices on the data axis, D = {args.dim}, {args.steps} + {args.steps} Euler steps, "
          "float32; per device:")  # fmt: skip
    print("| anchors N | rows per device | block_size | tile rows × N | tile | gathered anchors | peak live (measured) |")
    print("|---|---|---|---|---|---|---|")
    for n in args.anchors:
        local = n // args.devices
        for block_size in args.block_sizes:
            kernel = dict(num_steps=args.steps, solver="euler", axis_name=parallel.DATA, block_size=block_size or None)

            def local_loss(view1, view2, prior, kernel=kernel):
                lat = zoning.latents(view1, prior, **kernel)
                own = zoning.own_columns(view1.shape[0], parallel.DATA)
                _, log_probs = zoning.assign(view2, lat, targets=own, **kernel)
                return jax.lax.pmean(losses.representation_loss(log_probs)["total"], parallel.DATA)

            def step(view1, view2, prior):
                scalar = jax.sharding.PartitionSpec()
                sharded = jax.shard_map(local_loss, mesh=mesh, in_specs=(rows,) * 3, out_specs=scalar)
                return jax.value_and_grad(sharded, argnums=(0, 1))(view1, view2, prior)

            spec = jax.ShapeDtypeStruct((n, args.dim), "float32", sharding=jax.sharding.NamedSharding(mesh, rows))
            stats = jax.jit(step).lower(spec, spec, spec).compile().memory_analysis()
            peak = stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
            tile_rows = min(local, block_size or zoning._resolve_block_size(None, n))
            print(
                f"| {n} | {local} | {block_size or 'auto'} | {tile_rows} × {n} | {4 * tile_rows * n / mib:.3g} MiB | "
                f"{4 * n * args.dim / mib:.3g} MiB | {peak / mib:.0f} MiB |",
                flush=True,
            )


if __name__ == "__main__":
    main()
