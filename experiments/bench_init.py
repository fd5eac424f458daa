"""Compile and run time of a config's init program on CPU, with XLA's default options and with the ones
`train.Built.fresh_state` uses (`train._init_compiler_options`: no LLVM optimisation on CPU).

    JAX_COMPILATION_CACHE_DIR= PYTHONPATH=. python experiments/bench_init.py --configs digits_joint:runlocal gen_cifar10

The program is the one `fresh_state` compiles (`train.build(config, mesh).init`, jitted with its shardings), on
one CPU device; the persistent compilation cache must be off (empty JAX_COMPILATION_CACHE_DIR) for cold figures.
Writes docs/results/init_compile.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results  # noqa: E402

from lzn_jax import parallel, train  # noqa: E402


def measure(name: str, fresh_state: bool) -> dict:
    config = results.load_config(*name.split(":")) if ":" in name else results.load_config(name)
    built = train.build(config, parallel.make_mesh(1, 1))
    rng = jax.random.key(config.seed)
    lowered = jax.jit(built.init, out_shardings=built.shardings).lower(rng)
    start = time.perf_counter()
    options = train._init_compiler_options(built.shardings) if fresh_state else {}
    compiled = lowered.compile(compiler_options=options)
    compiled_at = time.perf_counter()
    jax.block_until_ready(compiled(rng))
    done = time.perf_counter()
    return {"compile_s": round(compiled_at - start, 1), "run_s": round(done - compiled_at, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["digits_joint:runlocal", "gen_cifar10"])
    args = parser.parse_args()
    if os.environ.get("JAX_COMPILATION_CACHE_DIR", None) != "":
        parser.error("set JAX_COMPILATION_CACHE_DIR= (empty): cached compiles would be timed as free")
    numbers = {}
    for name in args.configs:
        config_numbers = {}
        for label in ("xla_default", "fresh_state"):
            config_numbers[label] = measure(name, fresh_state=label == "fresh_state")
            print(name, label, config_numbers[label], flush=True)
        numbers[name] = config_numbers
    results.write("init_compile", numbers)


if __name__ == "__main__":
    main()
