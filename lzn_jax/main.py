r"""Entry point: parses flags, sets up devices and logging, and calls the train or eval function.

    python -m lzn_jax.main --config=configs/digits_joint.py --workdir=/tmp/lzn_digits
    python -m lzn_jax.main --config=configs/repr_imagenet.py --workdir=gs://bucket/lzn_repr \
        --config.data.data_dir=gs://bucket/tfds
    python -m lzn_jax.main --config=configs/digits_joint.py --workdir=/tmp/lzn_digits --mode=eval
"""

import logging
import os
import re
import sys
from typing import Optional

from absl import app, flags
from ml_collections import config_flags

from lzn_jax import checkpoint, config_files, configlib, parallel, run_lock, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples (local or gs://).")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train: train and evaluate (resuming); eval: evaluate once.")
flags.mark_flags_as_required(["config", "workdir"])


# Libraries whose INFO lines are chatter in a run's log (every checkpoint step, TFDS reads, GCS auth, HTTP).
_QUIET = ("/orbax/", "/tensorflow", "/etils/", "/google/auth/", "/google/cloud/", "/urllib3/", "/gcsfs/", "/fsspec/")


class _QuietLibraries(logging.Filter):
    """Orbax, TensorFlow/TFDS and the GCS clients log at INFO all the time; keep their warnings and errors only."""

    def filter(self, record):
        return record.levelno >= logging.WARNING or not any(lib in record.pathname for lib in _QUIET)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietLibraries())
    parallel.maybe_initialize_distributed()
    import jax  # after distributed initialisation: the first backend call fixes the process layout

    logging.info("JAX %s, %d process(es), %d device(s): %s", jax.__version__, jax.process_count(), jax.device_count(),
                 jax.devices()[0].device_kind)  # fmt: skip
    cache = compilation_cache_dir(FLAGS.workdir)
    if cache:  # read and written at the first compile, after setup has validated the config and the workdir
        jax.config.update("jax_compilation_cache_dir", cache)
    if FLAGS.mode == "train":
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    else:
        results = train.evaluate(FLAGS.config, FLAGS.workdir)
        for name, value in sorted(results.items()):
            print(f"{name}: {value:.6g}")


def compilation_cache_dir(workdir: str) -> Optional[str]:
    """`<workdir>/jax_cache`, where `main` keeps JAX's persistent compilation cache; None where the environment
    chose: JAX_COMPILATION_CACHE_DIR set to a folder (JAX uses that one) or to "" (no cache).

    A paper config's train step takes long to compile (the TPU compiler took 16 to 79 minutes of one core of the
    development machine for the paper configs' steps, docs/scaling.md), and the evaluators have programs of their
    own; without a cache, every run resumed after a preemption and every `--mode=eval` compiles them all again. In
    the workdir (local or gs://) the cache outlives the machines. JAX keys each entry by the program, the devices,
    the flags and the versions, so a changed config or topology compiles afresh; only programs that took 1 s or
    more to compile are kept (JAX's default).
    """
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return None
    return os.path.join(workdir, "jax_cache")


def _parse_flags(argv):
    """absl's flag parsing; an override naming no config key becomes configlib's nearest-key ValueError.

    ml_collections resolves `--config.a.b=v` while parsing --config and raises a bare AttributeError/KeyError.
    """
    try:
        try:
            remaining = FLAGS(argv)
        except flags.Error as error:  # a config file's get_config raising ValueError/TypeError: its last line
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            override = re.search(r"flag '?-*config\.([\w.]+)", str(error))
            if "Error whilst parsing config file" in str(error) and lines:
                raise ValueError(f"--config={config_files.flag_value(argv)}: {lines[-1].split(': ', 1)[-1]}") from None
            if override:  # absl parsing again would only say "The flag 'config.x' is defined twice"
                raise ValueError(_bad_override(argv, override.group(1), error)) from None
            remaining = app.parse_flags_with_usage(argv)  # absl's message and usage for any other flag error
        FLAGS.config.keys()  # ml_collections defers a config file's load failure to its first use
    except OSError as error:
        reason = " ".join(str(error).split())
        raise FileNotFoundError(f"--config={config_files.flag_value(argv)} could not be loaded: {reason}") from None
    except (AttributeError, KeyError) as error:
        raise ValueError(_unknown_override(argv) or f"A --config.* override names no config key: {error}") from None
    return remaining


def _bad_override(argv, dotted: str, error: Exception) -> str:
    """The message for `--config.<dotted>=<value>` that ml_collections could not apply: an unknown key (the nearest
    valid one), or a value that does not parse as the key's type (a bare "Unknown command line flag" before)."""
    config = FLAGS["config"].parser.parse(config_files.flag_value(argv))
    try:
        configlib.check_key(config, dotted)
    except ValueError as unknown:
        return f"--config.{dotted}: {unknown}"
    value = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--config.{dotted}=")), None)
    current = config
    for part in dotted.split("."):
        current = current[part]
    kind = type(current).__name__ if current is not None else "value of its type"
    return (f"--config.{dotted}={value!r} is not a valid {kind} (config.{dotted} is {current!r}; write tuples as "
            f"'(1, 2)', booleans as True/False). ({' '.join(str(error).split())})")


def _unknown_override(argv) -> Optional[str]:
    """configlib's message for the first --config.<key> override that the config file does not have."""
    config = FLAGS["config"].parser.parse(config_files.flag_value(argv))
    for arg in argv:
        if arg.startswith("--config."):
            dotted = arg[len("--config."):].split("=", 1)[0]
            try:
                configlib.check_key(config, dotted)
            except ValueError as error:
                return f"--config.{dotted}: {error}"
    return None


def run():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's C++ INFO lines (not its warnings)
    config_files.rewrite_argv(sys.argv)  # configs/<name>.py from any directory; `configs` importable
    try:
        app.run(main, flags_parser=_parse_flags)
    except train.Interrupted as stopped:  # SIGTERM / Ctrl-C: a checkpoint is saved; one line says how to resume
        print(stopped, file=sys.stderr)
        sys.exit(stopped.exit_code)
    except (
        ValueError, FileNotFoundError, PermissionError, train.TooManySkippedSteps, checkpoint.CheckpointRestoreError,
        run_lock.WorkdirLockedError,
    ) as error:
        logging.error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run()
