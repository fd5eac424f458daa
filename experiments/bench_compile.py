"""Compile and run time on CPU of a config's init program and train step, with XLA's default options, with
no LLVM optimisation (`xla_backend_optimization_level=0`, what `train.Built.fresh_state` uses for init on CPU),
and with XLA's older CPU fusion emitters (alone and with no LLVM optimisation; see OPTIONS).

    JAX_COMPILATION_CACHE_DIR= PYTHONPATH=. python experiments/bench_compile.py --configs digits_joint:runlocal gen_cifar10

Both programs are the ones the training loop compiles: `train.build(config, mesh).init` jitted with its shardings,
and `train_state.make_train_step` on a batch of the config's pipeline, on one CPU device. The train step is timed
over `--steps` steps after a first one (only for `--step-configs`: a paper-size step on CPU is slow). The
persistent compilation cache must be off (empty JAX_COMPILATION_CACHE_DIR) for cold figures.
Writes docs/results/compile_cpu.json (`--name`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results  # noqa: E402

from lzn_jax import data, parallel, train, train_state  # noqa: E402

# The last two are not used anywhere: they record why the train step keeps XLA's defaults. XLA's older (non-MLIR)
# CPU fusion emitters compile the step faster but the init six times slower (docs/results/compile_cpu_emitters.json);
# with no LLVM optimisation both compile much faster, but a test suite run with both (docs/results/test_times.txt,
# stop 19) gave NaN in the zoning kernel's float32 flows and the official-step tests, and no LLVM optimisation
# alone did too (tests/test_zoning.py), so neither is safe for the step.
OPTIONS = {
    "xla_default": {},
    "no_llvm_optimisation": train.CPU_INIT_COMPILER_OPTIONS,
    "legacy_fusion_emitters": {"xla_cpu_use_fusion_emitters": False},
    "no_llvm_optimisation_legacy_emitters": {**train.CPU_INIT_COMPILER_OPTIONS, "xla_cpu_use_fusion_emitters": False},
}


def _config(name: str):
    return results.load_config(*name.split(":")) if ":" in name else results.load_config(name)


def _timed_compile(lowered, options):
    start = time.perf_counter()
    compiled = lowered.compile(compiler_options=options)
    return compiled, round(time.perf_counter() - start, 1)


def measure_init(name: str, options: dict) -> dict:
    built = train.build(_config(name), parallel.make_mesh(1, 1))
    rng = jax.random.key(0)
    compiled, seconds = _timed_compile(jax.jit(built.init, out_shardings=built.shardings).lower(rng), options)
    start = time.perf_counter()
    jax.block_until_ready(compiled(rng))
    return {"compile_s": seconds, "run_s": round(time.perf_counter() - start, 2)}


def measure_step(name: str, options: dict, steps: int) -> dict:
    config = _config(name)
    mesh = parallel.make_mesh(1, 1)
    built = train.build(config, mesh)
    state = built.fresh_state(jax.random.key(0))
    step = train_state.make_train_step(built.task, built.optimizer, mesh, built.shardings)
    batch = parallel.global_batch(next(data.train_iterator(config.data, batch_size=config.batch_size, seed=0)), mesh)
    with jax.set_mesh(mesh):
        compiled, seconds = _timed_compile(step.lower(state, batch), options)
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
    ms = round((time.perf_counter() - start) / steps * 1e3, 1)
    return {"compile_s": seconds, "ms_per_step": ms, f"loss_after_{steps + 1}_steps": float(metrics["loss"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["digits_joint:runlocal", "gen_cifar10"], help="init timed")
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS), help="XLA options")
    parser.add_argument("--step-configs", nargs="+", default=["digits_joint:runlocal"], help="train step timed")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--name", default="compile_cpu", help="writes docs/results/<name>.json")
    args = parser.parse_args()
    if os.environ.get("JAX_COMPILATION_CACHE_DIR", None) != "":
        parser.error("set JAX_COMPILATION_CACHE_DIR= (empty): cached compiles would be timed as free")
    numbers = {"init": {}, "train_step": {}}
    for name in args.configs:
        numbers["init"][name] = {label: measure_init(name, OPTIONS[label]) for label in args.options}
        print("init", name, numbers["init"][name], flush=True)
    for name in args.step_configs:
        numbers["train_step"][name] = {label: measure_step(name, OPTIONS[label], args.steps) for label in args.options}
        print("train step", name, numbers["train_step"][name], flush=True)
    results.write(args.name, numbers)


if __name__ == "__main__":
    main()
