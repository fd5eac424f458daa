r"""The paper's three claims in miniature on scikit-learn's digits, with seeds, error bars and a verdict each.

    python experiments/claims.py                      # the full run (CPU budget: see FULL; resumable)
    python experiments/claims.py --quick --out=DIR    # a smoke version of every code path (4.5 min on one core, mostly compiling)

Every arm is a config of configs/*.py, changed only through config fields (seed, steps, batch size, a module
switched off, a loss weight), trained by `lzn_jax.train.train_and_evaluate` and scored by the project's
evaluators (from the run's metrics.jsonl) or through the public `lzn_jax.api` (`api.load(workdir)`).

1. generation — `digits_gen` (LZN image encoder) vs plain rectified flow (`encoder.name=''`: the same decoder,
   budget and Euler-10 sampler, no latent). Metric: Fréchet distance between `num_samples` generated images and
   the test split, in the 64-d hidden (ReLU) layer of a scikit-learn `MLPClassifier(hidden_layer_sizes=(64,))`
   trained on the real train split's 16×16 pixels (lower is better). Also the inversion → regeneration error
   (per-image L2 in [-1, 1] pixels, mean over `recon_num` test images; the plain RF has no latent and is
   inverted through its decoder alone, `task.invert` / `task.decode`, the same calls the reconstruction
   evaluator makes).
2. representation — `digits_repr` (LZN) vs `digits_simclr` (SimCLR; same encoder, views, steps, batch, probe).
   Metric: the frozen linear probe on the backbone features (`eval/linear_probe_frozen_accuracy`; the head's
   features are reported too), at the config's batch size; a sweep over `batch_sizes` for both methods. Arm
   `untrained`: the same network at its initialisation (`optim.lr.encoder=0`, one step); the raw-pixel probe is
   the reference (it does not depend on the seed).
3. joint — `digits_joint` vs the same image encoder + label anchors trained with the label loss alone
   (`loss.recon=0`: the decoder gets no gradient). Metric: `eval/accuracy` (test split, deterministic latents).

Verdict rule (per claim, LZN arm vs its baseline arm, one value per seed): a two-sided Welch t-test on the
per-seed values. p < 0.05 and LZN better in the claim's direction: "holds"; p < 0.05 and LZN worse: "does not
hold"; otherwise "within noise". With 3 seeds the test only sees large, consistent differences; for claim 2
("matches or beats SimCLR") "within noise" is compatible with "matches".

Budget: every arm of a claim gets the same steps, batch size and evaluation. The steps are far below the
configs' own (CPU time on one core; see FULL) and the warm-up is scaled with them (warmup_steps · steps /
the config's steps), the same for every arm. Where a claim does not hold, `deeper` looks one level further
at no extra training: generation at more sampler steps (Euler 40, both arms), joint at the std-1 prior and
with class weights (both arms), representation through the batch-size sweep.

Outputs: `<out>/claims.json` (`{"commit", "command", "claims": {claim: {"metric", "higher_is_better", "arms":
{arm: [value per seed]}, "verdict", ...}}, ...}`), `<out>/../results.md` and `<out>/../results_claims.png`
(full run: docs/results/claims.json, docs/results.md, docs/results_claims.png). Workdirs go under --workdir;
a finished run is not retrained (its scores are kept in <run>/claims_scores.json), so the command resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import results  # noqa: E402  (experiments/results.py: COMMIT and the command convention)
from lzn_jax import api, configlib, data, train  # noqa: E402
from lzn_jax.evaluators import fid  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Budget:
    seeds: tuple[int, ...]
    gen_steps: int
    joint_steps: int
    repr_steps: int
    batch_sizes: tuple[int, ...]  # representation sweep; must contain the config's batch size
    num_samples: int  # generated images for the Fréchet distance (the test split has 360)
    recon_num: int
    probe_epochs: int | None = None  # None: the config's
    euler_steps: tuple[int, ...] = (10, 40)  # generation: sampler steps scored (the first is the verdict's)
    quick: bool = False


FULL = Budget(seeds=(0, 1, 2), gen_steps=200, joint_steps=100, repr_steps=25, batch_sizes=(32, 64, 128),
              num_samples=360, recon_num=128)  # fmt: skip
QUICK = Budget(seeds=(0, 1), gen_steps=2, joint_steps=2, repr_steps=2, batch_sizes=(16,), num_samples=64,
               recon_num=16, probe_epochs=5, euler_steps=(10,), quick=True)  # fmt: skip


# ------------------------------------------------------------------ configs and runs


def load_config(name: str, quick: bool):
    """configs/<name>.py's get_config() (`:runlocal` in quick mode), as `lzn_jax.main --config` loads it."""
    config = results.load_config(name, "runlocal" if quick else None)
    if quick:  # smaller still than runlocal: compiling dominates a smoke run on CPU
        config.data.image_size = 8  # the digits' own resolution
        for net in ("encoder", "decoder"):
            if config[net].get("name", "").startswith("ncsnpp"):
                config[net].update(dict(nf=8, ch_mult=(1,)))
            elif config[net].get("name") == "resnet":  # runlocal's ResNet-10, at the digits configs' width
                config[net].update(dict(depth=18, stage_blocks=(1, 1, 1, 1), base_width=32))
        config.eval_batch_size = 64  # runlocal's 8 makes the evaluation passes long
    return config


def make_config(name, *, budget: Budget, seed: int, steps: int, evals=(), **overrides):
    """The config of one run: `name`'s config with the seed, the budget's schedule, only the evaluators in
    `evals` (at the end) and dotted `overrides` (e.g. {"encoder.name": ""})."""
    config = load_config(name, budget.quick)
    own_steps = config.num_train_steps
    config.seed = seed
    config.num_train_steps = steps
    config.optim.warmup_steps = max(1, round(config.optim.warmup_steps * steps / max(own_steps, steps)))
    config.log_every_steps = config.checkpoint_every_steps = config.eval_every_steps = steps
    for eval_name, spec in config.evals.items():
        spec.every_steps = 0 if eval_name in evals else -1
    if budget.probe_epochs and "linear_probe" in config.evals:
        config.evals.linear_probe.num_epochs = budget.probe_epochs
    configlib.override(config, **overrides)
    configlib.check(config)
    return config


final_metrics = results.final_eval_metrics


def run(workdir: str, config, score=None) -> dict:
    """Trains `config` in `workdir` (or finds it done) and returns its scores: the eval metrics, `score(workdir)`'s
    numbers and the CPU seconds this run took. Kept in <workdir>/claims_scores.json, so a rerun skips it."""
    path = os.path.join(workdir, "claims_scores.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    start, wall = time.process_time(), time.perf_counter()
    train.train_and_evaluate(config, workdir)
    scores = final_metrics(workdir)
    if score is not None:
        scores.update(score(workdir))
    scores["cpu_seconds"] = time.process_time() - start
    scores["wall_seconds"] = time.perf_counter() - wall
    with open(path, "w", encoding="utf-8") as f:
        json.dump(scores, f, indent=2)
    print(f"   {os.path.basename(workdir)}: {scores['wall_seconds']:.0f} s", flush=True)
    return scores


# ------------------------------------------------------------------ claim 1: generation


class DigitFeatures:
    """The hidden ReLU layer (64 units) of an MLP classifier trained on the real train split's pixels."""

    def __init__(self, data_cfg):
        from sklearn.neural_network import MLPClassifier

        (train_x, train_y), (test_x, test_y) = data.load_arrays(data_cfg, "train"), data.load_arrays(data_cfg, "test")
        self.mlp = MLPClassifier(hidden_layer_sizes=(64,), max_iter=1000, random_state=0)
        self.mlp.fit(_flat(train_x), train_y)
        self.test_accuracy = float(self.mlp.score(_flat(test_x), test_y))
        self.train_x, self.test_x = train_x, test_x
        self.test_stats = fid.feature_stats(self(test_x))

    def __call__(self, images) -> np.ndarray:
        return np.maximum(_flat(images) @ self.mlp.coefs_[0] + self.mlp.intercepts_[0], 0.0)

    def distance(self, images) -> float:
        """Fréchet distance between `images` [N, H, W, C] and the test split in this feature space."""
        return float(fid.frechet_distance(*fid.feature_stats(self(images)), *self.test_stats))


def _flat(images) -> np.ndarray:
    images = np.asarray(images, np.float64)
    return images.reshape(len(images), -1)


def regenerate(lzn, params, images, key):
    """Inversion → regeneration: the public `reconstruct` (image → latent → noise → image) when the model has
    an encoder; a plain RF is inverted and decoded through its decoder alone (no latent)."""
    if lzn.task.encoder is not None:
        return lzn.reconstruct(params, images, key=key)
    return lzn.task.decode(params, lzn.task.invert(params, images))


def generation_scores(features: DigitFeatures, budget: Budget):
    """workdir -> {fd_euler<S>, recon_l2_euler<S>} for each sampler step count (the model via `api.load`)."""

    def score(workdir):
        out = {}
        for steps in budget.euler_steps:
            config = _run_config(workdir)
            config.rf.euler_steps = steps
            lzn, params = api.load(workdir, config=config)
            samples = jax.jit(lzn.generate, static_argnames=("num", "sampler"))(
                params, jax.random.key(1), num=budget.num_samples)  # fmt: skip
            images = features.test_x[: budget.recon_num]
            recon = jax.jit(lambda p, x, k: regenerate(lzn, p, x, k))(params, images, jax.random.key(2))
            out[f"fd_euler{steps}"] = features.distance(samples)
            out[f"recon_l2_euler{steps}"] = float(np.mean(np.sqrt(np.sum((np.asarray(recon) - images) ** 2,
                                                                         axis=(1, 2, 3)))))  # fmt: skip
        return out

    return score


def _run_config(workdir):
    import ml_collections

    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        return ml_collections.ConfigDict(json.load(f))


def claim_generation(budget: Budget, root: str) -> dict:
    features = DigitFeatures(load_config("digits_gen", budget.quick).data)
    score = generation_scores(features, budget)
    arms = {"lzn": {}, "rf": {"encoder.name": ""}}
    runs = {arm: [run(f"{root}/generation/{arm}_s{seed}",
                      make_config("digits_gen", budget=budget, seed=seed, steps=budget.gen_steps, **overrides), score)
                  for seed in budget.seeds]
            for arm, overrides in arms.items()}  # fmt: skip
    pick = lambda key: {arm: [r[key] for r in rs] for arm, rs in runs.items()}  # noqa: E731
    first, *more = budget.euler_steps
    details = {
        "feature_classifier_test_accuracy": features.test_accuracy,
        "fd_train_vs_test_same_n": features.distance(features.train_x[: budget.num_samples]),
        "fd": {str(s): pick(f"fd_euler{s}") for s in budget.euler_steps},
        "recon_l2": {str(s): pick(f"recon_l2_euler{s}") for s in budget.euler_steps},
        "reconstruction_verdict": verdict(*pick(f"recon_l2_euler{first}").values(), False),
        "steps": budget.gen_steps, "num_samples": budget.num_samples, "recon_num": budget.recon_num,
    }  # fmt: skip
    return claim_record(
        f"Fréchet distance to the test split, MLP-classifier hidden layer (64-d), Euler {first}", False,
        pick(f"fd_euler{first}"), details=details,
        deeper=(f"Fréchet distance at Euler {more[-1]}", lambda d: d["fd"][str(more[-1])], False) if more else None,
    )  # fmt: skip


# ------------------------------------------------------------------ claim 2: representation

PROBE = "eval/linear_probe_frozen_accuracy"


def claim_representation(budget: Budget, root: str) -> dict:
    default = load_config("digits_repr", budget.quick).batch_size
    sizes = tuple(sorted(set(budget.batch_sizes)))
    if budget.quick:
        default = sizes[-1]
    elif default not in sizes:
        raise ValueError(f"batch_sizes {sizes} must contain the config's batch size {default}.")
    methods = {"lzn": "digits_repr", "simclr": "digits_simclr"}
    sweep = {}
    for size in sorted(sizes, key=lambda s: s != default):  # the verdict's batch size first
        for method, name in methods.items():
            sweep.setdefault(method, {})[size] = [
                run(f"{root}/representation/{method}_b{size}_s{seed}",
                    make_config(name, budget=budget, seed=seed, steps=budget.repr_steps, evals=("linear_probe",),
                                batch_size=size))
                for seed in budget.seeds
            ]  # fmt: skip
    untrained = [
        run(f"{root}/representation/untrained_s{seed}",
            make_config("digits_repr", budget=budget, seed=seed, steps=1, evals=("linear_probe",), batch_size=default,
                        **{"optim.lr.encoder": 0.0}))
        for seed in budget.seeds
    ]  # fmt: skip
    arms = {m: [r[PROBE] for r in sweep[m][default]] for m in methods}
    arms["untrained"] = [r[PROBE] for r in untrained]
    return claim_record(
        f"linear-probe test accuracy, backbone features (frozen probe), batch {default}", True, arms,
        details={
            "pixels": untrained[0][PROBE + "_pixels"],
            "head": {m: [r[PROBE + "_head"] for r in sweep[m][default]] for m in methods}
            | {"untrained": [r[PROBE + "_head"] for r in untrained]},
            "lzn_vs_untrained": verdict(arms["lzn"], arms["untrained"], True),
            "simclr_vs_untrained": verdict(arms["simclr"], arms["untrained"], True),
            "steps": budget.repr_steps, "batch_size": default,
        },
        batch_sweep={m: {str(size): [r[PROBE] for r in rs] for size, rs in sorted(per.items())}
                     for m, per in sweep.items()},
    )  # fmt: skip


# ------------------------------------------------------------------ claim 3: joint


def claim_joint(budget: Budget, root: str) -> dict:
    arms = {"lzn_joint": {}, "label_only": {"loss.recon": 0.0}}
    runs = {arm: [run(f"{root}/joint/{arm}_s{seed}",
                      make_config("digits_joint", budget=budget, seed=seed, steps=budget.joint_steps,
                                  evals=("class_accuracy",), **overrides))
                  for seed in budget.seeds]
            for arm, overrides in arms.items()}  # fmt: skip
    pick = lambda key: {arm: [r[key] for r in rs] for arm, rs in runs.items()}  # noqa: E731
    return claim_record(
        "test accuracy, image → latent → label (deterministic latents)", True, pick("eval/accuracy"),
        details={"accuracy_std1": pick("eval/accuracy_std1"),
                 "accuracy_with_class_weights": pick("eval/accuracy_with_class_weights"),
                 "steps": budget.joint_steps},  # fmt: skip
        deeper=("accuracy_std1", lambda d: d["accuracy_std1"], True),
    )


# ------------------------------------------------------------------ verdicts and records


def summary(values) -> dict:
    values = np.asarray(values, np.float64)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "n": int(len(values))}  # fmt: skip


def verdict(lzn, baseline, higher_is_better: bool, alpha: float = 0.05) -> dict:
    """The module docstring's rule: a two-sided Welch t-test on the per-seed values."""
    from scipy import stats

    lzn, baseline = np.asarray(lzn, np.float64), np.asarray(baseline, np.float64)
    diff = float(lzn.mean() - baseline.mean())
    if len(lzn) < 2 or len(baseline) < 2 or (lzn.std() == 0 and baseline.std() == 0):
        p = 0.0 if diff else 1.0
    else:
        p = float(stats.ttest_ind(lzn, baseline, equal_var=False).pvalue)
    better = diff > 0 if higher_is_better else diff < 0
    word = "within noise" if not p < alpha else ("holds" if better else "does not hold")
    return {"verdict": word, "difference_of_means": diff, "welch_p": p}


def claim_record(metric, higher_is_better, arms, *, details, deeper=None, **extra) -> dict:
    """{"metric", "higher_is_better", "arms", "verdict", ...}; the first two arms are LZN and its baseline."""
    lzn, baseline = list(arms)[:2]
    test = verdict(arms[lzn], arms[baseline], higher_is_better)
    record = {"metric": metric, "higher_is_better": higher_is_better, "arms": arms, "verdict": test["verdict"],
              "comparison": f"{lzn} vs {baseline}", "test": test,
              "summary": {arm: summary(v) for arm, v in arms.items()}, "details": details, **extra}  # fmt: skip
    if deeper is not None and test["verdict"] != "holds":
        name, get, higher = deeper
        values = get(details)
        record["deeper"] = {"what": name, **verdict(values[lzn], values[baseline], higher),
                            "summary": {arm: summary(v) for arm, v in values.items()}}  # fmt: skip
    return record


CLAIMS = {"generation": claim_generation, "representation": claim_representation, "joint": claim_joint}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the smoke version (runlocal networks, 2 steps)")
    parser.add_argument("--workdir", default=None, help="run directories (default: workdirs/claims[_quick])")
    parser.add_argument("--out", default=None, help="where claims.json goes (default: docs/results)")
    parser.add_argument("--only", nargs="+", default=list(CLAIMS), choices=list(CLAIMS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                        help="representation sweep (default: the budget's); a first pass with the config's size alone "
                             "gives every verdict early, a rerun without the flag adds the sweep")  # fmt: skip
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    if args.batch_sizes:
        budget = dataclasses.replace(budget, batch_sizes=tuple(args.batch_sizes))
    root = args.workdir or str(ROOT / "workdirs" / ("claims_quick" if args.quick else "claims"))
    out = pathlib.Path(args.out or ROOT / "docs" / "results")
    if not jax.config.jax_compilation_cache_dir:  # seeds reuse compiles; a cache the caller set up is left alone
        jax.config.update("jax_compilation_cache_dir", os.path.join(root, "jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    start, wall = time.process_time(), time.perf_counter()
    command = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *(argv or sys.argv[1:])])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    claims = {}
    for name in args.only:
        print(f"== {name}", flush=True)
        claims[name] = {**CLAIMS[name](budget, root), "measured": {"commit": results.COMMIT, "date": date,
                                                                   "command": command}}  # fmt: skip
    record = {
        "commit": results.COMMIT,
        "command": command,
        "date": date,
        "claims": claims,
        "budget": dataclasses.asdict(budget),
        "cpu_seconds": {"this_invocation": time.process_time() - start,
                        "training_and_scoring_all_runs": _run_cpu_seconds(root)},  # fmt: skip
        "wall_seconds_this_invocation": time.perf_counter() - wall,
    }
    if set(args.only) != set(CLAIMS) and (out / "claims.json").exists():
        record = _merged_with_earlier(record, json.loads((out / "claims.json").read_text(encoding="utf-8")))
    import claims_report  # noqa: E402  (experiments/claims_report.py: results.md and the figure)

    out.mkdir(parents=True, exist_ok=True)
    (out / "claims.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    claims_report.write(record, out.parent / "results.md", out.parent / "results_claims.png")
    print(f"wrote {out / 'claims.json'}")
    return record


def _merged_with_earlier(record: dict, earlier: dict) -> dict:
    """`record` (a run of some claims) completed with the other claims of an earlier claims.json, each keeping its
    own `measured` (commit, date, command). Refused when the budgets differ in anything but the batch sweep: the
    arms of one page must share a budget."""
    budget = {k: v for k, v in record["budget"].items() if k != "batch_sizes"}
    before = {k: (tuple(v) if isinstance(v, list) else v) for k, v in earlier["budget"].items() if k != "batch_sizes"}
    now = {k: (tuple(v) if isinstance(v, list) else v) for k, v in budget.items()}
    if before != now:
        raise SystemExit(f"The earlier claims.json has another budget ({before} vs {now}): rerun every claim.")
    for name, claim in earlier["claims"].items():
        if name not in record["claims"]:
            measured = claim.get("measured") or {k: earlier[k] for k in ("commit", "date", "command")}
            record["claims"][name] = {**claim, "measured": measured}
    record["claims"] = {name: record["claims"][name] for name in CLAIMS if name in record["claims"]}
    earlier_cpu = earlier["cpu_seconds"]["training_and_scoring_all_runs"]
    record["cpu_seconds"]["earlier_claims_runs"] = earlier_cpu
    return record


def _run_cpu_seconds(root) -> float:
    """CPU seconds of every finished run under `root` (their claims_scores.json), resumed invocations included."""
    total = 0.0
    for path in pathlib.Path(root).glob("*/*/claims_scores.json"):
        total += json.loads(path.read_text(encoding="utf-8")).get("cpu_seconds", 0.0)
    return total


if __name__ == "__main__":
    main()
