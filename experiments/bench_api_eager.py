"""Seconds per eager call of the public API (`api.LZN`), first call and again, as a notebook user makes them.

    JAX_COMPILATION_CACHE_DIR= PYTHONPATH=. python experiments/bench_api_eager.py --config digits_joint:runlocal

Two roads on the same model, params and inputs: `api` (the methods as shipped: each network and flow of a
composition runs as one jitted program) and `op_by_op` (the same compositions with the task's functions called
eagerly, as `api.LZN` did before it jitted them: every op dispatched alone, the ODE loops retraced on every
call). Params are a fresh init of the config; inputs are 8 test images. The persistent compilation cache must
be off (empty JAX_COMPILATION_CACHE_DIR) for cold first calls. Writes docs/results/api_eager.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results  # noqa: E402

from lzn_jax import api, data  # noqa: E402


class OpByOp(api.LZN):
    """`api.LZN` with the task's functions called eagerly (the road before they were jitted)."""

    def _compiled(self, name):
        return getattr(self.task, name)


def calls(lzn, params, images, key) -> dict:
    labels = jnp.arange(images.shape[0]) % lzn.task.num_classes
    return {
        "embed": lambda: lzn.embed(params, images),
        "latents": lambda: lzn.latents(params, images, key=key),
        "classify": lambda: lzn.classify(params, images, key=key),
        "generate": lambda: lzn.generate(params, key, labels=labels),
        "reconstruct": lambda: lzn.reconstruct(params, images, key=key),
    }


def timed(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return round(time.perf_counter() - start, 3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="digits_joint:runlocal")
    args = parser.parse_args()
    if os.environ.get("JAX_COMPILATION_CACHE_DIR", None) != "":
        parser.error("set JAX_COMPILATION_CACHE_DIR= (empty): cached compiles would be timed as free")
    config = results.load_config(*args.config.split(":"))
    images, _ = data.load_arrays(config.data, "test")
    images = jnp.asarray(np.asarray(images[:8]), jnp.float32)
    key = jax.random.key(0)
    out = {}
    for road, cls in (("api", api.LZN), ("op_by_op", OpByOp)):
        lzn = cls.from_config(config)
        params = jax.jit(lzn.task.init)(jax.random.key(0), {"image": images, "label": jnp.zeros((8,), jnp.int32)})
        out[road] = {}
        for name, fn in calls(lzn, params, images, key).items():
            first, again = timed(fn), timed(fn)
            out[road][name] = {"first_call_s": first, "again_s": again}
            print(f"{road:9s} {name:12s} first call {first:7.2f} s   again {again:7.3f} s", flush=True)
    results.write("api_eager", {"config": args.config, "batch": 8, "roads": out})


if __name__ == "__main__":
    main()
