"""Compile time on CPU of the train step in the replicated and the FSDP layout, on forced host devices.

    JAX_COMPILATION_CACHE_DIR= PYTHONPATH=. python experiments/bench_fsdp_compile.py --devices 8 \
        --configs digits_joint:runlocal gen_afhq_cat:runlocal gen_cifar10:runlocal

The step is the one `main` compiles (`train.build`, `train_state.make_train_step`), lowered for abstract inputs of
the config's batch (as `experiments/scale_rehearsal.py` does) and compiled once per layout; the size of the
compiled HLO text and its collectives are printed beside the time. Writes docs/results/<--name>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _force_devices(argv) -> None:
    """--devices N forced CPU devices; set before JAX is imported."""
    count = argv[argv.index("--devices") + 1] if "--devices" in argv else "8"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


_force_devices(sys.argv)

import jax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results  # noqa: E402

from lzn_jax import configlib, data, parallel, train, train_state  # noqa: E402


def measure(name: str, fsdp: bool) -> dict:
    config = configlib.override(results.load_config(*name.split(":")), **{"mesh.fsdp": fsdp})
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.model)
    built = train.build(config, mesh)
    step = train_state.make_train_step(built.task, built.optimizer, mesh, built.shardings)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), built.abstract_state,
                         built.shardings)  # fmt: skip
    rows = parallel.batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=rows)
             for k, v in data.batch_spec(config.data, config.batch_size).items()}  # fmt: skip
    with jax.set_mesh(mesh):
        lowered = step.trace(state, batch).lower()
        start = time.perf_counter()
        compiled = lowered.compile()
        seconds = time.perf_counter() - start
    text = compiled.as_text()
    return {"compile_s": round(seconds, 1), "compiled_hlo_chars": len(text), "state_leaves": len(jax.tree.leaves(state)),
            **{op: text.count(f" {op}(") for op in ("all-gather", "all-reduce", "reduce-scatter")}}  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=8, help="forced CPU devices (read before JAX starts)")
    parser.add_argument("--configs", nargs="+", default=["digits_joint:runlocal", "gen_afhq_cat:runlocal", "gen_cifar10:runlocal"])
    parser.add_argument("--name", default="compile_fsdp", help="writes docs/results/<name>.json")
    args = parser.parse_args()
    if os.environ.get("JAX_COMPILATION_CACHE_DIR", None) != "":
        parser.error("set JAX_COMPILATION_CACHE_DIR= (empty): cached compiles would be timed as free")
    numbers = {"devices": jax.device_count()}
    for name in args.configs:
        numbers[name] = {layout: measure(name, layout == "fsdp") for layout in ("replicated", "fsdp")}
        print(name, numbers[name], flush=True)
    results.write(args.name, numbers)


if __name__ == "__main__":
    main()
