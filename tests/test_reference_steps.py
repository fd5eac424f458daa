"""Three training steps of lzn_jax against the official trainers, recorded in float64 (every `step_*.npz`).

Each file (see reference/README.md, "step_case*_seed*.npz") holds a tiny version of one case study: the official
config, initial weights, three batches, every random draw, and what the official `_train_iteration` computed.
The system under test is built as `main` builds it: the paper config of the case study (configs/*.py), shrunk to
the file's sizes and architecture, through `train.build(config, mesh)`; the weights go through
`lzn_jax.convert`; the step is `train_state.make_train_step`. The recorded draws enter through the tasks' one
replay hook (`batch["noise"]`, `lzn_jax.tasks.common.draws`); nothing else of the step is replaced.

Checked at every step: every loss component, the pre-clip gradient norm, which modules train, the learning
rates, the parameters and EMA parameters (elements, and Σp, Σp² per tensor), the EMA counters and decays.
Everything is derived from the file (sizes, architecture, clipping, warm-up, freezing), so files of other seeds
and shapes drop in. Hyperparameters the README calls official (learning rates, EMA decays, ODE steps, cut-off,
prior scale, loss weights, solvers) are asserted equal to our paper config's, which is what they test.

Tolerances (relative to the largest entry of each array unless said otherwise):
- float64 (`jax_enable_x64`): the README's suggestions — losses 1e-8, grad norm 1e-7, lr 1e-12, Σp and Σp² per
  tensor 1e-7, parameter and EMA elements absolute 2e-2·Σ_{j≤k} lr_j, probabilities (assignment accuracy)
  absolute 1e-8, ode_error absolute 1e-12.
- float32 (the default numerics, precision "highest"): losses and grad norm `F32_FACTOR` × the deviation of the
  official trainer's own float32 run from its float64 run (`f32/*`, per file), at least `F32_FLOOR`; Σp, Σp²
  per tensor that deviation itself, at least 1e-5 (parameters move with their float32 gradients: in case 2 the
  official float32 gradient norm is 1.3e-3 off its float64 one, and our Σp reach 1.3e-4 at step 2); elements absolute `F32_ELEMENT`·Σ lr (a float32 gradient may flip Adam's near-sign m/√v where
  |g| ~ eps = 1e-8, a move of up to ~2 lr).
"""

from __future__ import annotations

import json

import jax
import ml_collections
import numpy as np
import pytest

from lzn_jax import convert, optim, parallel, train, train_state
from lzn_jax.tasks import common
from support import load_config

pytestmark = pytest.mark.slow  # six step compilations (3 files x 2 dtypes)

PAPER_CONFIGS = {1: "gen_cifar10", 2: "repr_imagenet", 3: "joint_cifar10"}
LOSS_NAMES = {"total": "loss", "recon": "recon", "label": "label", "cross_entropy": "cross_entropy", "prob": "prob"}
F64 = dict(loss=1e-8, grad_norm=1e-7, lr=1e-12, sums=1e-7, element=2e-2, probability=1e-8, ode_error=1e-12)
F32_FACTOR, F32_FLOOR, F32_ELEMENT = 10.0, 1e-5, 2.5


# ---------------------------------------------------------------------------------------------------- the file


def load(path) -> dict:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def official_entry(module: str) -> str:
    return convert.CHECKPOINT_ENTRIES[module]


def nhwc(images: np.ndarray) -> np.ndarray:
    return np.transpose(images, (0, 2, 3, 1))


def subset(tensor: np.ndarray) -> np.ndarray:
    """The README's element subset of a torch-layout tensor."""
    flat = tensor.reshape(-1)
    return flat[:: max(1, flat.size // 64)][:64]


# ---------------------------------------------------------------------------------------------------- the config


def ncsnpp_section(name: str, params: dict, *, decoder: bool) -> dict:
    """Our NCSN++ section from the official `encoder`/`decoder` params (the composition fills latent/label sizes)."""
    fields = convert.official_ncsnpp_fields(params["config"]["model"], decoder=decoder)
    extra = {k: v for k, v in params.items() if k not in ("config", "latent_dim", "num_classes")}
    return dict(name=name, **fields, **extra)


def model_sections(official: dict, case: int) -> dict:
    if case == 2:
        fields = convert.official_resnet_fields(official["encoder"]["params"])
        return {"encoder": dict(name="resnet", **fields)}
    sections = {
        "encoder": ncsnpp_section("ncsnpp_encoder", official["encoder"]["params"], decoder=False),
        "decoder": ncsnpp_section("ncsnpp_decoder", official["decoder"]["params"], decoder=True),
    }
    if case == 3:
        sections["label_anchors"] = dict(name="label_anchors")
    return sections


def assert_official(config, official: dict, case: int, modules) -> None:
    """The values the README calls official are our paper config's."""
    training = official["training"]
    lrs = official["optimizer"]["additional_params"]
    for m in modules:
        entry = official_entry(m)
        assert config.optim.lr[m] == lrs[f"{entry}_lr"], m
        assert config.ema[m] == official[f"{entry}_ema"]["params"]["decay"], m
    assert config.zoning.num_steps == training["ode_num_steps"]
    flow = official["encoder_latent_flow"]["name"]
    assert config.zoning.solver == ("euler" if "Euler" in flow else "dpm_solver++"), flow
    if case == 2:
        assert config.zoning.prior_scale == training["prior_data_scale"]
        assert config.zoning.cutoff == training["assignment_loss_cut_off_step"]
        assert dict(config.loss)["prob"] == training["loss_weight"]["prob"]
        assert config.loss.cross_entropy == training["loss_weight"]["cross_entropy"]
    else:
        assert config.loss.recon == training["recon_loss_coe"] * official["losses"][0]["weight"]
        assert config.conditional == official["conditional"]
    if case == 3:
        assert config.zoning.label_num_steps == training["label_ode_num_steps"]
        assert config.zoning.cutoff == training["label_loss_cut_off_step"]
        assert config.zoning.label_solver == ("euler" if "Euler" in official["label_latent_flow"]["name"] else "dpm_solver++")
        assert config.loss.label == training["label_loss_coe"]


def make_config(ref: dict, dtype: str) -> ml_collections.ConfigDict:
    """The paper config of the file's case study, at the file's sizes, architecture, clipping, warm-up and freezing."""
    official = json.loads(str(ref["config_json"]))
    case, training = int(ref["case"]), official["training"]
    config = load_config(PAPER_CONFIGS[case])
    config.batch_size = int(ref["batch_size"])
    config.latent_dim = int(ref["latent_dim"])
    config.data.image_size = int(ref["image_size"])
    config.data.num_channels = int(ref["image_channels"])
    if case == 3:
        config.num_classes = config.data.num_classes = int(ref["num_classes"])
    for section, fields in model_sections(official, case).items():
        if dtype == "float64":
            fields["param_dtype"] = "float64"
        config[section] = ml_collections.ConfigDict(fields)
    modules = [m for m in convert.CHECKPOINT_ENTRIES if official_entry(m) in list(ref["modules"])]
    assert_official(config, official, case, modules)
    scheduler = official["lr_scheduler"]["params"]
    config.optim.warmup_steps = int(scheduler["total_iters"])
    assert scheduler["start_factor"] == pytest.approx(1.0 / config.optim.warmup_steps), "warm-up must start at lr/W"
    config.optim.grad_clip = float(ref["gradient_clipping"])
    for m in modules:
        config.module_steps[m] = int(training[f"num_{official_entry(m)}_iterations"])
    config.dtype = dtype
    return config


# ---------------------------------------------------------------------------------------------------- comparison


class Checker:
    """Collects every comparison of a run (so one failure report lists all mismatches and their sizes).

    `worst[kind]` = (error, tolerance) of the comparison of that kind nearest its tolerance.
    """

    def __init__(self):
        self.failures, self.worst = [], {}

    def close(self, what: str, kind: str, ours, ref, tol: float, *, absolute: bool = False) -> None:
        ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
        assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != reference {ref.shape}"
        scale = 1.0 if absolute else max(float(np.max(np.abs(ref))), 1e-300)
        err = float(np.max(np.abs(ours - ref))) / scale if ref.size else 0.0
        if err / tol >= self.worst.get(kind, (0.0, 1.0))[0] / self.worst.get(kind, (0.0, 1.0))[1]:
            self.worst[kind] = (err, tol)  # the comparison nearest its tolerance
        if not err <= tol:
            self.failures.append(f"{what}: {'absolute' if absolute else 'relative'} error {err:.3e} > {tol:.1e}")

    def equal(self, what: str, ours, ref) -> None:
        if not np.array_equal(np.asarray(ours), np.asarray(ref)):
            self.failures.append(f"{what}: {ours} != reference {ref}")


def official_float32_deviation(ref: dict, num_steps: int) -> float:
    """Largest relative difference of the official float32 run's loss and grad norm from its float64 run."""
    return max(
        abs(float(ref[f"f32/{f32}"][k]) / float(ref[f"step{k}/{f64}"]) - 1.0)
        for k in range(num_steps)
        for f32, f64 in (("loss_total", "loss/total"), ("grad_norm", "grad_norm"))
    )


def learning_rates(state, config, modules) -> dict:
    """The rate each module's next Adam update uses: the warm-up schedule at that module's update count."""
    out = {}
    for m in modules:
        adam = [s for s in jax.tree.leaves(state.opt_state.inner_states[m], is_leaf=lambda s: hasattr(s, "mu"))
                if hasattr(s, "mu")][0]  # fmt: skip
        out[m] = optim.warmup_schedule(config.optim.lr[m], config.optim.warmup_steps)(adam.count)
    return out


def check_tensors(check, ref, k, kind, state_tree, layout, names, entry, element_tol, sums_tol):
    """Our `state_tree` (params or EMA) of one module against the file's elements and per-tensor sums."""
    ours = convert.to_state_dict(layout, jax.device_get(state_tree), names)
    stored = "param" if kind == "param" else "ema"
    for name in names:
        full, part = f"step{k}/{stored}/{entry}/{name}", f"step{k}/{stored}_sub/{entry}/{name}"
        if full in ref:
            check.close(full, f"{kind} elements", ours[name], ref[full], element_tol, absolute=True)
        elif part in ref:
            check.close(part, f"{kind} elements", subset(ours[name]), ref[part], element_tol, absolute=True)
    for stat, fn in (("sumsq", lambda x: np.sum(np.square(x, dtype=np.float64))), ("sum", lambda x: np.sum(x, dtype=np.float64))):
        key = f"step{k}/{stored}_{stat}/{entry}"
        check.close(key, f"{kind} sums", [fn(ours[n]) for n in names], ref[key], sums_tol)


# ---------------------------------------------------------------------------------------------------- the run


def batch_of(ref: dict, k: int, case: int, dtype) -> dict:
    """Step k's images and labels (NHWC) and, under "noise", its recorded draws (the tasks' replay hook)."""
    images = nhwc(ref[f"step{k}/x"]).astype(dtype)
    labels = ref.get(f"step{k}/label", np.zeros(images.shape[:1], np.int64)).astype(np.int32)
    batch = {"image": images, "label": labels, common.REPLAY_KEY: {"prior": ref[f"step{k}/prior"]}}
    if case == 2:
        batch["image2"] = nhwc(ref[f"step{k}/x_view2"]).astype(dtype)
    else:
        batch[common.REPLAY_KEY].update(t=ref[f"step{k}/t"], x0=nhwc(ref[f"step{k}/x0"]))
    return batch


def run_and_check(path, dtype: str) -> dict:
    ref = load(path)
    case, num_steps = int(ref["case"]), int(ref["num_steps"])
    config = make_config(ref, dtype)
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.model)
    built = train.build(config, mesh)
    task = built.task
    modules = task.modules
    # The official weights, as `train.setup` loads a converted checkpoint (config.checkpoint.path): into the
    # fresh state `setup` compiles (an eager init, once used here, spent most of the test compiling each fill).
    params, ema_params = convert.convert_checkpoint(convert.load_checkpoint(str(path)), config)
    state = built.fresh_state(jax.random.key(config.seed))
    state = state.replace(
        params=jax.device_put(params, built.shardings.params), ema_params=jax.device_put(ema_params, built.shardings.ema_params)
    )  # fmt: skip
    step_fn = train_state.make_train_step(task, built.optimizer, mesh, built.shardings)
    layouts = {m: convert.layout_for(getattr(task, m), config.data.image_size) for m in modules}

    if dtype == "float64":
        tol = dict(F64)
    else:
        deviation = official_float32_deviation(ref, num_steps)
        looser = max(F32_FLOOR, F32_FACTOR * deviation)
        tol = dict(loss=looser, grad_norm=looser, lr=1e-6, sums=max(F32_FLOOR, deviation), element=F32_ELEMENT, probability=looser,
                   ode_error=1e-5)  # fmt: skip

    check = Checker()
    lr_used = {m: 0.0 for m in modules}
    with jax.set_mesh(mesh):
        for k in range(num_steps):
            lrs = learning_rates(state, config, modules)
            batch = jax.device_put(batch_of(ref, k, case, np.dtype(dtype)), parallel.batch_sharding(mesh))
            state, metrics = step_fn(state, batch)
            metrics = jax.device_get(metrics)
            for key in [key for key in ref if key.startswith(f"step{k}/loss/")]:
                component = key.rsplit("/", 1)[-1]
                check.close(key, "losses", metrics[LOSS_NAMES[component]], ref[key], tol["loss"])
            check.close(f"step{k}/grad_norm", "grad_norm", metrics["grad_norm"], ref[f"step{k}/grad_norm"], tol["grad_norm"])
            if case == 2:
                check.close(f"step{k}/assignment_acc", "probabilities", metrics["assignment_accuracy"],
                            ref[f"step{k}/assignment_acc"], tol["probability"], absolute=True)  # fmt: skip
                check.close(f"step{k}/ode_error", "ode_error", metrics["ode_error"], ref[f"step{k}/ode_error"],
                            tol["ode_error"], absolute=True)  # fmt: skip
            check.equal(f"step{k}/skipped", metrics["skipped"], 0.0)
            trainable = ref.get(f"step{k}/trainable", np.ones(len(modules), np.int64))
            for i, m in enumerate(modules):
                entry = official_entry(m)
                assert list(ref["modules"])[i] == entry, "optimizer group order"
                check.equal(f"step{k}/trainable/{entry}", metrics[f"{m}_enabled"], float(trainable[i]))
                check.close(f"step{k}/lr/{entry}", "lr", lrs[m], ref[f"step{k}/lr"][i], tol["lr"])
                if trainable[i]:
                    lr_used[m] += float(ref[f"step{k}/lr"][i])
                element_tol = tol["element"] * lr_used[m]
                names = [str(n) for n in ref[f"names/{entry}"]]
                check_tensors(check, ref, k, "param", state.params[m], layouts[m], names, entry, element_tol, tol["sums"])
                check_tensors(check, ref, k, "ema", state.ema_params[m], layouts[m], names, entry, element_tol, tol["sums"])
                check.equal(f"step{k}/ema_num_updates/{entry}", state.ema_counts[m], ref[f"step{k}/ema_num_updates/{entry}"])
                decay = float(ref[f"step{k}/ema_decay/{entry}"])
                if not np.isnan(decay):
                    n = int(state.ema_counts[m])
                    check.close(f"step{k}/ema_decay/{entry}", "ema decay", min(config.ema[m], (1 + n) / (10 + n)), decay, 1e-15)
    assert not check.failures, f"{path} ({dtype}):\n  " + "\n  ".join(check.failures)
    return check.worst


def test_three_official_steps_float64(step_file):
    """The official trainer's three steps to the README's float64 tolerances (jax_enable_x64, params float64).

    Catches any change to the losses, the kernel's use in them, clipping, freezing, Adam, warm-up or EMA.
    """
    with jax.enable_x64(True):
        run_and_check(step_file, "float64")


def test_three_official_steps_float32(step_file):
    """The same steps in the default float32 numerics, to a multiple of the official float32 run's own error."""
    run_and_check(step_file, "float32")
