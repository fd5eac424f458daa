r"""Scale rehearsal: compile a config's real train step and evaluators at the paper's shapes, without the hardware.

    PYTHONPATH=. python experiments/scale_rehearsal.py --config=configs/repr_imagenet.py            # 128 CPU devices
    PYTHONPATH=. python experiments/scale_rehearsal.py --config=configs/gen_cifar10.py --devices=16 --json
    PYTHONPATH=. python experiments/scale_rehearsal.py --config=configs/gen_cifar10.py --topology=v5e:4x4   # needs libtpu

The system is built as `main` builds it: `train.build(config, mesh)` (task, optimizer, abstract state and its
shardings) and `train_state.make_train_step`, for the replicated layout and for `mesh.fsdp`; every enabled
evaluator of `config.evals` is built by `evaluators.build` and its jitted functions are compiled at the batch
the evaluator runs them with (`compile_targets()`). Inputs are abstract (`jax.ShapeDtypeStruct` with shardings)
at the dataset's real image size and the config's real global batch (`data.batch_spec`); nothing is allocated.

Without `--topology` the mesh is `--devices` simulated CPU devices (`--xla_force_host_platform_device_count`,
set before JAX starts), and the numbers are the XLA CPU compiler's: its buffer assignment approximates a
GPU's per-device memory (the GPU compiler fuses differently: read them as estimates, within tens of percent).
With `--topology=v5e:8x16` (libtpu installed: `pip install .[tpu]`) the program is compiled by the TPU compiler
for that slice and the numbers are the TPU compiler's own.

Per device it reports:
- peak memory: `compiled.memory_analysis()`, arguments + outputs − donated aliases + temporaries;
- FLOPs per step: `compiled.cost_analysis()["flops"]` of the per-device program. XLA counts the body of a
  `while` loop once, not once per trip, so the zoning kernel's Euler/DPM-Solver steps and tiles (`lax.scan`)
  are counted once; the networks, which hold almost all FLOPs, are not in loops;
- collective bytes: the result bytes of every all-reduce / all-gather / reduce-scatter / all-to-all /
  collective-permute in the compiled HLO (loop bodies once, as above);
- implied step time = FLOPs per step / (chip peak FLOP/s × UTILISATION), for the chips in CHIPS.
"""

from __future__ import annotations

import os
import sys

PAPER_DEVICES = {  # the paper's GPU count per case study (Lin et al. 2025, experiment set-up sections)
    "gen_cifar10": 16,
    "gen_afhq_cat": 32,
    "gen_celebahq": 32,
    "gen_lsun_bedroom": 32,
    "repr_imagenet": 128,
    "joint_cifar10": 16,
}
DEFAULT_DEVICES = 8  # any other config


def _argv_value(name: str, argv) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def default_devices(config_arg: str | None) -> int:
    name = os.path.splitext(os.path.basename((config_arg or "").split(":")[0]))[0]
    return PAPER_DEVICES.get(name, DEFAULT_DEVICES)


def _force_cpu_devices(argv) -> None:
    """XLA reads the simulated device count once, when JAX starts: set it before anything imports JAX."""
    count = _argv_value("devices", argv) or str(default_devices(_argv_value("config", argv)))
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        flags = f"{flags} --xla_force_host_platform_device_count={count}"
    # Nothing compiled here ever runs: skip LLVM's optimisation of the CPU code (most of a big compile's time).
    # Memory and FLOPs come from XLA's HLO passes and buffer assignment, which this does not change.
    if "xla_backend_optimization_level" not in flags:
        flags = f"{flags} --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    os.environ["XLA_FLAGS"] = flags.strip()
    if not _argv_value("topology", argv):  # (a TPU topology needs the TPU plugin loaded)
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    else:  # compiling needs no TPU: do not wait for the lock of another process that loaded libtpu
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


if __name__ == "__main__":
    _force_cpu_devices(sys.argv)
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints where a long compile is

import json  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import datetime  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from lzn_jax import configlib, data, evaluators, parallel, train, train_state  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chips import CHIPS, GiB, TPU_HBM  # noqa: E402
from results import COMMIT  # noqa: E402  (taken at start: a compile can outlast several commits)

# An assumption, not a measurement: a model-FLOP utilisation typical of well-tuned convnet training on these
# chips (mixed convolution sizes, small per-device batches). experiments/device_check.sh measures the real one.
UTILISATION = 0.4
LAYOUTS = {"replicated": False, "fsdp": True}
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_ARRAY = re.compile(r"\b(pred|s8|u8|s16|u16|f16|bf16|s32|u32|f32|s64|u64|f64|c64|c128)\[([0-9,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}  # fmt: skip

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/gen_cifar10.py[:runlocal].", lock_config=True)
flags.DEFINE_integer("devices", None, "Simulated CPU devices (default: the paper's GPU count for paper configs, else 8).")
flags.DEFINE_string("topology", None, "Compile for a TPU slice instead, e.g. v5e:8x16 or v5p:4x4x8 (needs libtpu).")
flags.DEFINE_bool("json", False, "Print exactly one JSON object instead of the table.")
flags.DEFINE_list("layouts", list(LAYOUTS), "Layouts to compile: replicated, fsdp.")
flags.DEFINE_bool("evals", True, "Also compile the enabled evaluators' functions.")
flags.DEFINE_string("table", None, "Print docs/scaling.md's markdown table of these --json outputs (a glob) and exit.")


def tpu_devices(topology: str) -> list:
    """The devices of a TPU slice, e.g. "v5e:8x16", for ahead-of-time compilation (no TPU needed)."""
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise SystemExit(
            f"--topology={topology} compiles with the TPU compiler, which comes with libtpu: "
            "`pip install 'lzn_jax[tpu]'` (or `pip install libtpu`), then rerun."
        ) from None
    from jax.experimental import topologies

    return list(topologies.get_topology_desc(topology_name=topology, platform="tpu").devices)


def tpu_hbm(topology: str) -> int:
    kind = topology.split(":")[0].lower()
    if kind not in TPU_HBM:
        raise SystemExit(f"--topology={topology}: unknown chip {kind!r}; known: {sorted(TPU_HBM)}.")
    return TPU_HBM[kind]


def peak_bytes(compiled) -> int:
    """Per-device bytes live at the peak: arguments + outputs − donated (aliased) buffers + temporaries."""
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)


def flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))


def collective_bytes(compiled) -> int | None:
    """Result bytes of the collectives in the compiled per-device HLO (each op once; async pairs once); None where
    the compiled program cannot be printed."""
    try:
        text = compiled.as_text()
    except jax.errors.JaxRuntimeError as error:
        # libtpu 0.0.52 with jax 0.10.2 fails to print the 128-chip ResNet-50 step it has just compiled ("RET_CHECK
        # ... async-update instruction should have 1 operands but sees 4"); the compile's other numbers still stand.
        print(f"collective bytes unavailable: {str(error).splitlines()[0]}", file=sys.stderr, flush=True)
        return None
    total = 0
    for line in text.splitlines():
        op = next((c for c in _COLLECTIVES if f" {c}(" in line or f" {c}-start(" in line), None)
        if op is None or "=" not in line:
            continue
        result = line.split("=", 1)[1].split(f" {op}", 1)[0]
        arrays = _ARRAY.findall(result)
        if f" {op}-start(" in line and len(arrays) > 1:  # (operands, results) tuple of an async start
            arrays = arrays[len(arrays) // 2 :]
        total += sum(_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d] or [1])) for dtype, dims in arrays)
    return total


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _compile(fn, *args, platform: str, what: str):
    print(f"compiling {what} ...", file=sys.stderr, flush=True)  # progress: big configs compile for minutes
    start = time.perf_counter()
    traced = fn.trace(*args)
    lowered = traced.lower(lowering_platforms=(platform,)) if platform == "tpu" else traced.lower()
    compiled = lowered.compile()
    return compiled, time.perf_counter() - start


def _measure(compiled, seconds) -> dict:
    result = dict(peak_bytes_per_device=peak_bytes(compiled), flops_per_step=flops(compiled),
                  compile_seconds=round(seconds, 1))  # fmt: skip
    print(f"compiled: {result}", file=sys.stderr, flush=True)  # kept in the log should anything after it fail
    return result | dict(collective_bytes=collective_bytes(compiled))


def rehearse_layout(config, mesh, platform: str, with_evals: bool) -> dict:
    """Compiles the train step (and the enabled evaluators) of `config` on `mesh`; per-device numbers."""
    built = train.build(config, mesh)
    step = train_state.make_train_step(built.task, built.optimizer, mesh, built.shardings)
    state = _abstract(built.abstract_state, built.shardings)
    batch_sharding = parallel.batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
             for k, v in data.batch_spec(config.data, config.batch_size).items()}  # fmt: skip
    with jax.set_mesh(mesh):
        result = _measure(*_compile(step, state, batch, platform=platform, what=f"train step (fsdp={config.mesh.fsdp})"))
        result["state_bytes_per_device"] = int(sum(
            np.prod(s.sharding.shard_shape(s.shape)) * s.dtype.itemsize for s in jax.tree.leaves(state)))  # fmt: skip
        result["evaluators"] = rehearse_evaluators(config, built, mesh, platform) if with_evals else {}
    return result


def _placeholder_files(workdir: str) -> dict:
    """{kind: {file argument: path}}: files of the right shapes for evaluators a paper run switches on once the
    user supplies a file (FID's Inception weights: random ones here; only shapes matter to a compile)."""
    from lzn_jax.evaluators import inception

    path = os.path.join(workdir, "placeholder_inception.npz")
    np.savez(path, **inception.state_dict_from_variables(inception.init_inception_variables(0)))
    return {"fid": {"inception_weights": path}}


def rehearse_evaluators(config, built, mesh, platform: str) -> dict:
    """{evaluator name: {function: numbers}} for every evaluator `train` would run (every_steps != -1), and for
    those switched off only until the user gives them a file (FID without Inception weights), which get a
    placeholder file (`evaluators.FILE_ARGUMENTS`). A function of the same name and input shapes in several
    evaluators (e.g. the sampler of fid, fid50k and fid_saved) is compiled once."""
    params = _abstract(built.abstract_state.ema_params, built.shardings.ema_params)
    out, seen = {}, {}
    with tempfile.TemporaryDirectory() as workdir:
        placeholders = None
        for name, spec in config.evals.items():
            spec = dict(spec)
            kind = evaluators.kind_of(name, spec)
            file_keys = evaluators.FILE_ARGUMENTS.get(kind, ())
            off = evaluators.every_steps(spec, config.eval_every_steps) == -1
            if off and not (file_keys and not all(spec.get(k) for k in file_keys)):
                continue  # off by choice, not for want of a file
            if file_keys and not all(spec.get(k) for k in file_keys):
                placeholders = placeholders or _placeholder_files(workdir)
                spec.update(placeholders[kind])
                print(f"{name}: placeholder {', '.join(file_keys)} (off until the user gives the file)", file=sys.stderr)
            ev = evaluators.build(name, spec, task=built.task, config=config, workdir=workdir, mesh=mesh, writer=None)
            if not hasattr(ev, "compile_targets"):  # host-side evaluators (e.g. sample_accuracy's pixel probe)
                out[name] = {}
                continue
            out[name] = {}
            for fn_name, (fn, rows) in ev.compile_targets().items():
                key = (fn_name, str(jax.tree.map(lambda x: (x.shape, x.dtype), rows)))
                if key not in seen:
                    seen[key] = _measure(*_compile(fn, params, *rows, platform=platform, what=f"{name}/{fn_name}"))
                out[name][fn_name] = seen[key]
    return out


def implied_step_seconds(flops_per_step: float, dtype: str) -> dict:
    return {chip: flops_per_step / (spec[dtype] * UTILISATION) for chip, spec in CHIPS.items()}


def rehearse(config, *, devices: int | None, topology: str | None, layouts, with_evals: bool) -> dict:
    if topology:
        device_list, platform, hbm = tpu_devices(topology), "tpu", tpu_hbm(topology)
    else:
        device_list, platform, hbm = jax.devices()[: devices or jax.device_count()], "cpu", CHIPS["A100-40GB"]["hbm"]
    out = dict(config=None, devices=len(device_list), platform=platform, topology=topology, hbm_bytes_per_device=hbm,
               global_batch=config.batch_size, dtype=config.dtype, utilisation_assumed=UTILISATION,
               chips={k: {"hbm_bytes": v["hbm"], "peak_flops": v[config.dtype]} for k, v in CHIPS.items()},
               layouts={})  # fmt: skip
    for layout in layouts:
        layout_config = configlib.override(config.copy_and_resolve_references(), **{"mesh.fsdp": LAYOUTS[layout]})
        configlib.check(layout_config)
        mesh = parallel.make_mesh(layout_config.mesh.data, layout_config.mesh.model, devices=device_list)
        parallel.check_batch_size(layout_config.batch_size, mesh)
        result = rehearse_layout(layout_config, mesh, platform, with_evals)
        result["fits"] = result["peak_bytes_per_device"] <= hbm and all(
            f["peak_bytes_per_device"] <= hbm for ev in result["evaluators"].values() for f in ev.values())
        result["implied_step_seconds"] = implied_step_seconds(result["flops_per_step"], config.dtype)
        out["layouts"][layout] = result
        print(f"{layout}: {json.dumps(result)}", file=sys.stderr, flush=True)  # kept if a later layout fails
    return out


def _gib(n) -> str:
    return f"{n / GiB:.2f} GiB"


def _mib(n) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f}"


def print_table(report: dict) -> None:
    print(f"{report['config']}: {report['devices']} {report['platform']} devices"
          + (f" ({report['topology']})" if report["topology"] else "")
          + f", global batch {report['global_batch']}, {report['dtype']}, limit {_gib(report['hbm_bytes_per_device'])}/device")  # fmt: skip
    for layout, r in report["layouts"].items():
        times = ", ".join(f"{chip} {s * 1e3:.3g} ms" for chip, s in r["implied_step_seconds"].items())
        print(f"  {layout:10s} train step: peak {_gib(r['peak_bytes_per_device'])} (state {_gib(r['state_bytes_per_device'])}), "
              f"{r['flops_per_step'] / 1e12:.3g} TFLOP, collectives {_mib(r['collective_bytes'])} MiB, "
              f"{'fits' if r['fits'] else 'DOES NOT FIT'}; step at {UTILISATION:.0%} utilisation: {times}")  # fmt: skip
        for name, fns in r["evaluators"].items():
            for fn_name, f in fns.items():
                print(f"  {'':10s} eval {name}/{fn_name}: peak {_gib(f['peak_bytes_per_device'])}, "
                      f"{f['flops_per_step'] / 1e12:.3g} TFLOP per call")  # fmt: skip


def json_report(report: dict) -> dict:
    """The issue's schema (config, devices, platform, topology, hbm_bytes_per_device, global_batch, layouts with
    peak_bytes_per_device, flops_per_step and evaluators {name: peak}) plus details and provenance."""
    for r in report["layouts"].values():
        r["evaluator_functions"] = r["evaluators"]
        r["evaluators"] = {name: max((f["peak_bytes_per_device"] for f in fns.values()), default=None)
                           for name, fns in r["evaluators"].items()}  # fmt: skip
    return report


def markdown_table(reports) -> str:
    """docs/scaling.md's rehearsal table: one row per (config, devices or topology, layout)."""
    chips = list(CHIPS)
    head = ["config", "mesh", "batch", "layout", "peak GiB/device", "state GiB/device", "TFLOP/step/device",
            "collectives MiB", "fits", "largest evaluator GiB", *[f"step s, {c}" for c in chips],
            f"train GPU-h, A100 at {UTILISATION:.0%}"]  # fmt: skip
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for report in reports:
        mesh = report["topology"] or f"{report['devices']} CPU"
        steps = report.get("num_train_steps")
        for layout, r in report["layouts"].items():
            evals = [v for v in r["evaluators"].values() if v is not None]
            a100 = r["implied_step_seconds"]["A100-40GB"]
            gpu_hours = f"{a100 * steps * report['devices'] / 3600:,.0f}" if steps and not report["topology"] else ""
            cells = [report["config"], mesh, report["global_batch"], layout, f"{r['peak_bytes_per_device'] / GiB:.2f}",
                     f"{r['state_bytes_per_device'] / GiB:.2f}", f"{r['flops_per_step'] / 1e12:.3g}",
                     _mib(r['collective_bytes']), "yes" if r["fits"] else "**no**",
                     f"{max(evals) / GiB:.2f}" if evals else "–",
                     *[f"{r['implied_step_seconds'][c]:.3g}" for c in chips], gpu_hours]  # fmt: skip
            rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(rows)


def main(argv):
    del argv
    if FLAGS.table:
        import glob

        print(markdown_table([json.load(open(path)) for path in sorted(glob.glob(FLAGS.table))]))
        return
    config = FLAGS.config
    if config is None:
        raise app.UsageError("--config is required (or --table to render saved --json outputs).")
    report = rehearse(config, devices=FLAGS.devices, topology=FLAGS.topology, layouts=FLAGS.layouts,
                      with_evals=FLAGS.evals)  # fmt: skip
    report["config"] = _argv_value("config", sys.argv)
    report["num_train_steps"] = config.num_train_steps
    report["command"] = " ".join(["python", "experiments/scale_rehearsal.py", *sys.argv[1:]])
    report["commit"] = COMMIT
    report["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    report["jax"] = jax.__version__
    if FLAGS.json:
        print(json.dumps(json_report(report)))
    else:
        print_table(report)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs.* imports
    app.run(main)
