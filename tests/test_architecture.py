"""The rooms of lzn_jax and what each may import (docs/DESIGN.md, "Rooms"), checked by parsing the imports.

Every `import lzn_jax...` / `from lzn_jax... import ...` of a file counts, at top level or deferred inside a
function: a deferred import is still a dependency. `ALLOWED` lists, per room, the lzn_jax modules it may use;
anything else fails with the file, the import and the rule. Fast: nothing is imported but the API itself, in a
subprocess, to check that inference pulls in no training code.
"""

import ast
import dataclasses
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lzn_jax"

# room (a module or a package, as lzn_jax.<name>) -> lzn_jax modules it may import besides its own package.
# A name ending in ".*" allows a package's submodules; "lzn_jax.tasks.protocol" allows that one module alone.
ALLOWED = {
    "zoning": set(),  # the pure kernel: no networks, configs, tasks or training
    "samplers": set(),
    "losses": {"zoning"},
    "models": set(),  # networks know no zoning, losses, tasks, data or training
    "data": set(),  # input pipelines know no models or tasks
    "writers": {"files"},
    "files": set(),
    "parallel": set(),
    "checkpoint": set(),
    "run_lock": set(),  # one training run per workdir
    "optim": set(),
    "tasks": {"models", "zoning", "losses", "samplers"},  # compositions: no data, loop, evaluators or API
    "evaluators": {"data", "files", "parallel", "losses", "tasks.protocol"},  # capabilities, not the loop
    "train_state": {"optim", "parallel"},
    "configlib": {"data", "tasks", "evaluators"},  # tasks and evaluators deferred, for their checks
    "config_files": set(),  # finding and loading configs/<name>.py[:arg], for every command
    "api": {"checkpoint", "config_files", "configlib", "data", "tasks", "zoning"},  # inference: no training code
    "embed": {"api", "config_files", "data"},
    "convert": {"config_files", "models", "tasks"},
    "train": {"checkpoint", "configlib", "data", "evaluators", "files", "optim", "parallel", "run_lock", "tasks", "train_state",
              "writers"},  # fmt: skip
    "main": {"checkpoint", "config_files", "configlib", "parallel", "run_lock", "train"},
    "shipped": set(),
}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


PACKAGES = {_module_name(p) for p in PACKAGE.rglob("__init__.py")}  # lzn_jax, lzn_jax.models, ...


def _imports(path: pathlib.Path):
    """(line, imported lzn_jax module) of every lzn_jax import in the file, `from lzn_jax import x` as lzn_jax.x."""
    module = _module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                # `from lzn_jax.tasks import protocol` may name a submodule: count it as lzn_jax.tasks.protocol
                yield node.lineno, f"{base}.{alias.name}" if base in PACKAGES else base


def _room(module: str) -> str:
    return module.split(".")[1] if module != "lzn_jax" else ""


def _allowed(room: str, imported: str) -> bool:
    target = imported.split(".", 1)[1] if imported.startswith("lzn_jax.") else ""
    if not target or _room(imported) == room:
        return True  # the package itself, or its own room
    return any(target == rule or target.startswith(rule + ".") for rule in ALLOWED[room])


FILES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_room_has_a_rule():
    rooms = {_room(_module_name(p)) for p in FILES} - {""}
    assert rooms == set(ALLOWED), "add the new room to ALLOWED and to docs/DESIGN.md: " + str(rooms ^ set(ALLOWED))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_room_rules(path):
    module = _module_name(path)
    room = _room(module)
    if not room:
        return
    bad = [f"line {line}: {imported}" for line, imported in _imports(path)
           if imported.startswith("lzn_jax") and not _allowed(room, imported)]  # fmt: skip
    assert not bad, f"{module} (room {room!r}, may import {sorted(ALLOWED[room])}) imports {bad}"


def test_only_the_prediction_functions_see_a_task():
    """Evaluators are built from the functions they need (big_vision's predict_fn): `evaluators/predict.py` makes
    them from a task, and no evaluator imports a task module. Bug this catches: an evaluator taking the task
    again and asking it what it can do, so that a test can no longer hand it a stand-in function."""
    seeing = sorted(str(p.relative_to(ROOT)) for p in (PACKAGE / "evaluators").glob("*.py")
                    if any(imported.startswith("lzn_jax.tasks") for _, imported in _imports(p)))  # fmt: skip
    assert seeing == ["lzn_jax/evaluators/predict.py"]


def test_the_rules_catch_a_forbidden_import():
    assert not _allowed("models", "lzn_jax.zoning")
    assert not _allowed("api", "lzn_jax.train")
    assert not _allowed("evaluators", "lzn_jax.tasks.generation")
    assert _allowed("evaluators", "lzn_jax.tasks.protocol")
    assert _allowed("tasks", "lzn_jax.models.ncsnpp")
    assert _allowed("models", "lzn_jax.models.layers")


@pytest.mark.slow  # 14 s cold on 2 cores (fast-tier budget)
def test_importing_the_api_pulls_in_no_training_code():
    code = (
        "import sys, lzn_jax.api, lzn_jax.embed\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['lzn_jax', 'train'], ['lzn_jax', 'train_state'], ['lzn_jax', 'optim'], ['lzn_jax', 'evaluators'], "
        "['lzn_jax', 'main']))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    run_python(code)


def run_python(code: str) -> str:
    """Runs `code` in a fresh interpreter on the CPU with this checkout first on the path; returns its stdout."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600,
                            env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow  # 17 s cold on 2 cores (fast-tier budget)
def test_building_every_paper_train_step_imports_no_tensorflow():
    """A bare accelerator machine has no TensorFlow (experiments/device_check.sh builds the steps there).

    Bug this catches: configlib.check importing an evaluator module that imported `writers` at top level, whose CLU
    TensorBoard writer imports TensorFlow: every model line of the device check failed. Only building is checked
    here (no compile), so it stays fast; tests/test_device_check.py runs the whole script.
    """
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "import importlib.util, glob, os\n"
        "from lzn_jax import configlib, data, parallel, train, train_state\n"
        "import lzn_jax.evaluators.fid, lzn_jax.evaluators.linear_probe, lzn_jax.evaluators.export\n"
        "mesh = parallel.make_mesh(1, 1)\n"
        "for path in sorted(glob.glob('configs/*.py')):\n"
        "    name = os.path.basename(path)[:-3]\n"
        "    if name == 'common': continue\n"
        "    spec = importlib.util.spec_from_file_location(name, path)\n"
        "    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "    config = configlib.override(module.get_config('runlocal'), **{'mesh.data': 1, 'mesh.fsdp': False})\n"
        "    configlib.check(config)\n"
        "    built = train.build(config, mesh)\n"
        "    train_state.make_train_step(built.task, built.optimizer, mesh, built.shardings)\n"
        "    data.batch_spec(config.data, 2)\n"
        "    print(name, 'built')\n"
    )
    out = run_python(code)
    assert out.count("built") == len(list((ROOT / "configs").glob("*.py"))) - 1, out


@pytest.mark.parametrize("name", __import__("lzn_jax.models", fromlist=["names"]).names())
def test_every_model_owns_its_size_check_example_inputs_and_tiny_preset(name):
    """What lets a new model touch two files: configs/common.runlocal, convert.param_shapes and tasks.check_config
    ask the model class, so a model missing one of these would fail there only for configs that use it."""
    from lzn_jax import models

    cls = models.model_class(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    assert isinstance(cls.TINY, dict) and set(cls.TINY) <= fields, (name, set(cls.TINY) - fields)
    assert callable(getattr(cls, "example_inputs", None)) and callable(getattr(cls, "check_image_size", None))


def test_per_device_handling_happens_once_around_the_loss():
    """The train step folds the device index into the dropout key and averages over devices (make_train_step's
    device_loss), once for every task: a task that folded the index again would draw other dropout masks than
    the step-parity references expect, and one that forgot it under a future change would go unnoticed."""
    offenders = [str(p.relative_to(ROOT)) for p in (PACKAGE / "tasks").glob("*.py")
                 if any(name in p.read_text() for name in ("axis_index", "pmean"))]  # fmt: skip
    assert not offenders, offenders
