"""A diagnostic: every JAX compile of every Python process, with the test that caused it, one file per process.

    PYTHONPATH=experiments/compile_log LZN_COMPILE_LOG_DIR=/tmp/compiles python -m pytest ... tests

Python imports `sitecustomize` at start-up from the path, so the pytest workers and every subprocess they start
(`python -m lzn_jax.main`, the notebook's kernel) log too. Each line of `<LZN_COMPILE_LOG_DIR>/<pid>.log`:
time, event (`backend_compile_duration`, `jaxpr_trace_duration`, `jaxpr_to_mlir_module_duration`, the persistent
cache's events), seconds, the jitted function's name, `PYTEST_CURRENT_TEST`, the process's command line. A program
loaded from the persistent compilation cache logs a `cache_retrieval_time_sec` event, and its
`backend_compile_duration` is the load's seconds, not a compile's.
docs/results/test_times.txt's per-compile figures come from these logs. Without LZN_COMPILE_LOG_DIR it does nothing.
"""

import importlib.abc
import importlib.machinery
import os
import sys
import time

_LOG_DIR = os.environ.get("LZN_COMPILE_LOG_DIR")


def _register() -> None:
    from jax._src import monitoring

    log = open(os.path.join(_LOG_DIR, f"{os.getpid()}.log"), "a", buffering=1)
    wanted = ("backend_compile_duration", "jaxpr_to_mlir_module_duration", "jaxpr_trace_duration")

    def listener(event, secs, **kwargs):
        if event.endswith(wanted) or "compilation_cache" in event:
            test = os.environ.get("PYTEST_CURRENT_TEST", "?")
            log.write(f"{time.time():.2f}\t{event.rsplit('/', 1)[-1]}\t{secs:.3f}\t{kwargs.get('fun_name', '')}\t"
                      f"{test}\t{' '.join(sys.argv)[:120]}\n")  # fmt: skip

    monitoring.register_event_duration_secs_listener(listener)


class _AfterJaxDispatch(importlib.abc.MetaPathFinder):
    """Registers the listener once jax._src.dispatch is imported (importing JAX here would slow every process)."""

    def find_spec(self, name, path, target=None):
        if name != "jax._src.dispatch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            try:
                _register()
            except Exception as error:  # a diagnostic must never break the process it watches
                print(f"compile_log: not logging ({error})", file=sys.stderr)

        spec.loader.exec_module = exec_module
        return spec


if _LOG_DIR:
    sys.meta_path.insert(0, _AfterJaxDispatch())
