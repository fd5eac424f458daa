"""The evaluators the training loop runs (config.evals), on tiny models: names, files, and the batch behaviour
of class accuracy."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import load_config

from lzn_jax import data, evaluators, parallel, tasks
from lzn_jax.evaluators import common, inception

TINY = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0)


def tiny_config(name):
    config = load_config(name, "runlocal")
    for section in ("encoder", "decoder"):
        if config[section].get("name", "").startswith("ncsnpp"):
            config[section].update(TINY)
    config.data.image_size = 8
    config.rf.euler_steps = 2
    config.eval_batch_size = 64
    return config


def init(config):
    task = tasks.build(config)
    batch = {"image": jnp.zeros((2, 8, 8, 1)), "label": jnp.zeros((2,), jnp.int32)}
    if config.data.num_views == 2:
        batch["image2"] = batch["image"]
    return task, task.init(jax.random.key(0), batch)


@pytest.fixture(scope="module")
def joint():
    config = tiny_config("digits_joint")
    task, params = init(config)
    return config, task, params, parallel.make_mesh(-1)


def build(name, spec, config, task, mesh, workdir=None):
    return evaluators.build(name, spec, task=task, config=config, workdir=workdir, mesh=mesh, writer=None)


@pytest.mark.slow  # 41 s cold on 2 cores (fast-tier budget)
def test_unknown_evaluator_names_the_valid_kinds(joint):
    config, task, _, mesh = joint
    with pytest.raises(ValueError, match="did you mean 'samples'"):
        build("samplez", {}, config, task, mesh)


@pytest.mark.slow  # 53 s cold on 2 cores (fast-tier budget)
def test_class_accuracy_names_and_padding_rows_change_no_prediction(joint):
    config, task, params, mesh = joint
    ev = build("class_accuracy", dict(splits=("test",), stds=(0.0, 1.0), batch_size=64), config, task, mesh)
    with jax.set_mesh(mesh):
        results = dict(ev.run(params, 0))
        assert set(results) == {"eval/accuracy", "eval/accuracy_with_class_weights", "eval/accuracy_std1",
                                "eval/accuracy_std1_with_class_weights"}  # fmt: skip
        assert all(0.0 <= v <= 1.0 for v in results.values())
        # A batch of 5 real rows padded to 8 (mask False, weight 0 in the mixture) predicts as the 5 rows alone.
        x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, size=(8, 8, 8, 1)), jnp.float32)
        labels, prior = jnp.arange(8) % 10, jnp.zeros((8, config.latent_dim))
        mask = jnp.arange(8) < 5
        # Jitted (eagerly, each op was a compile of its own: 92 s of them in the full suite).
        classify = jax.jit(functools.partial(ev.classify_fn.local, axis_name=None))
        padded = classify(params, x, labels, mask, prior)
        alone = classify(params, x[:5], labels[:5], mask[:5], prior[:5])
        for p, a in zip(padded, alone):
            np.testing.assert_array_equal(p[:5], a)
        # ... whereas another batch around the same rows gives them other latents (the documented dependence).
        zeros, image_latents = jnp.zeros((10, config.latent_dim)), jax.jit(task.image_latents)
        other = image_latents(params, jnp.concatenate([x[:5], -x[:5]]), zeros)
        assert not np.allclose(other[:5], image_latents(params, x[:5], zeros[:5]))


@pytest.mark.slow  # needs the module's `joint` model (36 s to build cold): every other user of it is slow (fast-tier budget)
def test_class_accuracy_mixtures_are_consecutive_runs_of_the_seed0_torch_permutation(joint):
    """As the official sampler: batch i of a split holds examples perm[i·B : (i+1)·B] of torch.randperm(N) seeded
    with 0; shuffle_seed=None reads the split in its own order. A mixture formed in file order (the bug this
    guards against) puts other images together, and so other latents."""
    config, task, params, mesh = joint
    images, labels = data.load_arrays(config.data, "test")
    order = common.torch_randperm(len(labels), 0)
    shuffled = build("class_accuracy", dict(splits=("test",), batch_size=64), config, task, mesh)
    plain = build("class_accuracy", dict(splits=("test",), batch_size=64, shuffle_seed=None), config, task, mesh)
    with jax.set_mesh(mesh):
        batches = [{k: np.asarray(v) for k, v in b.items()} for b in shuffled.batches("test")]
        first_plain = {k: np.asarray(v) for k, v in next(iter(plain.batches("test"))).items()}
    assert len(batches) == -(-len(labels) // 64)
    rows = np.concatenate([b["image"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(rows, images[order])
    np.testing.assert_array_equal(np.concatenate([b["label"][b["mask"]] for b in batches]), labels[order])
    np.testing.assert_array_equal(first_plain["image"], images[:64])


@pytest.mark.slow  # needs the module's `joint` model: every other user of it is slow (fast-tier budget)
def test_ordered_split_buffers_at_most_max_host_bytes_and_yields_the_same_batches(joint):
    config = joint[0]
    order = common.torch_randperm(360, 0)
    one_pass = list(common.ordered_split(config.data, "test", order, 64))
    row_bytes = common.image_bytes(config.data)
    passes = []
    reads = data.eval_iterator

    def counting_reads(*args, **kwargs):
        passes.append(1)
        return reads(*args, **kwargs)

    data.eval_iterator = counting_reads
    try:
        several = list(common.ordered_split(config.data, "test", order, 64, max_host_bytes=128 * row_bytes))
    finally:
        data.eval_iterator = reads
    assert len(passes) == 3  # 128 rows a pass: 360 rows in 3 passes
    for a, b in zip(one_pass, several, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.slow  # needs the module's `joint` model, and compiles a sampler (10 s): every other user of it is slow (fast-tier budget)
def test_samples_write_one_png_per_sampler(joint, tmp_path):
    config, task, params, mesh = joint
    ev = build("samples", dict(samplers=("euler",), per_class=1), config, task, mesh, str(tmp_path))
    with jax.set_mesh(mesh):
        results = dict(ev.run(params, 12))
    assert os.listdir(tmp_path / "samples") == ["euler_00000012.png"]
    assert np.isfinite(results["eval/samples_euler_std"])


@pytest.mark.slow  # 9 s cold on 2 cores (fast-tier budget)
def test_reconstruction_error_is_reported(joint, tmp_path):
    config, task, params, mesh = joint
    ev = build("reconstruction", dict(num=4, repeats=1), config, task, mesh, str(tmp_path))
    with jax.set_mesh(mesh):
        results = dict(ev.run(params, 3))
    assert results["eval/reconstruction_l2_euler"] > 0 and np.isfinite(results["eval/reconstruction_l2_euler"])
    assert os.listdir(tmp_path / "reconstructions") == ["euler_00000003.png"]


@pytest.mark.slow  # 15 s cold on 2 cores (fast-tier budget)
def test_sample_classifier_accuracy(joint):
    config, task, params, mesh = joint
    ev = build("sample_accuracy", dict(per_class=2, num_epochs=2), config, task, mesh)
    with jax.set_mesh(mesh):
        results = dict(ev.run(params, 0))
    assert set(results) == {"eval/sample_accuracy_euler", "eval/sample_classifier_test_accuracy"}
    assert all(0.0 <= v <= 1.0 for v in results.values())


@pytest.mark.slow  # 41 s cold on 2 cores (fast-tier budget)
def test_fid_with_inception_weights_from_a_file(joint, tmp_path):
    config, task, params, mesh = joint
    weights = tmp_path / "inception.npz"
    np.savez(weights, **inception.state_dict_from_variables(inception.init_inception_variables(0)))
    spec = dict(inception_weights=str(weights), num_samples=4, batch_size=4, pipelines=("clean",),
                num_reference_samples=4, samplers=("euler",), metric="fid4")  # fmt: skip
    ev = build("fid", spec, config, task, mesh, str(tmp_path))
    seen = []
    features = ev.features
    ev.features = lambda images, pipeline: seen.append(np.asarray(images)) or features(images, pipeline)
    with jax.set_mesh(mesh):
        results = dict(ev.run(params, 0))
    assert set(results) == {"eval/fid4_clean_euler"} and np.isfinite(results["eval/fid4_clean_euler"])
    cached = [name for name in os.listdir(tmp_path) if name.startswith("fid_stats_")]
    assert len(cached) == 1 and cached[0].startswith("fid_stats_digits_train_clean_8px_n4-torchperm0_")  # the subset
    # The reference subset is the first 4 of the official sampler's seed-0 torch.randperm, not the first 4 files.
    train_images, _ = data.load_arrays(config.data, "train")
    expected = train_images[common.torch_randperm(len(train_images), 0)[:4]]
    np.testing.assert_array_equal(seen[0], expected)
    assert ev.host_memory_bytes() < 2**28  # bounded: 4 reference images, moments, one Inception chunk
    with pytest.raises(ValueError, match="inception_weights"):
        build("fid", {}, config, task, mesh, str(tmp_path))


@pytest.fixture(scope="module")
def representation():
    config = tiny_config("digits_repr")
    config.encoder.update(dict(depth=18, base_width=32, small_images=True))
    config.latent_dim = 64
    task, params = init(config)
    return config, task, params, parallel.make_mesh(-1)


@pytest.mark.slow  # 60 s cold on 2 cores (fast-tier budget)
def test_frozen_linear_probe_and_export_on_a_representation_model(representation, tmp_path):
    config, task, params, mesh = representation
    spec = dict(protocol="frozen", num_epochs=2, batch_size=64, modes=("no_head", "head"), include_pixels=True)
    probe = build("linear_probe", spec, config, task, mesh)
    export = build("export", dict(split="test"), config, task, mesh, str(tmp_path))
    with jax.set_mesh(mesh):
        results = dict(probe.run(params, 0))
        exported = dict(export.run(params, 5))
    names = {"eval/linear_probe_frozen_accuracy", "eval/linear_probe_frozen_accuracy_head",
             "eval/linear_probe_frozen_accuracy_pixels"}  # fmt: skip
    assert names <= set(results) and not any(k.startswith("eval/linear_probe_accuracy") for k in results)
    assert all(0.0 <= results[k] <= 1.0 for k in results if "accuracy" in k)
    assert exported["eval/exported_embeddings"] == 360.0
    files = sorted(os.listdir(tmp_path / "embeddings"))
    features = np.load(tmp_path / "embeddings" / [f for f in files if not f.endswith("_labels.npy")][0])
    assert features.shape == (360, 256)  # ResNet-10 at base width 32: 8·32 pooled features (no head)
    assert export.host_memory_bytes() >= 360 * 256 * 4


@pytest.mark.slow  # 30 s cold on 2 cores (fast-tier budget)
def test_augmented_linear_probe_streams_fresh_views_under_the_paper_metric_name(representation):
    """The default protocol (the paper's) names its metric eval/linear_probe_accuracy and reads the train split
    through the augmented training pipeline, one epoch of steps_per_epoch minibatches per probe epoch."""
    config, task, params, mesh = representation
    probe = build("linear_probe", dict(num_epochs=2, batch_size=256, include_pixels=True), config, task, mesh)
    assert probe.protocol == "augmented"
    seen = []
    stream = probe._train_stream
    probe._train_stream = lambda fns, steps: (seen.append(1) or item for item in stream(fns, steps))
    with jax.set_mesh(mesh):
        results = dict(probe.run(params, 0))
    assert set(results) == {f"eval/linear_probe_{kind}{suffix}" for kind in ("accuracy", "train_accuracy")
                            for suffix in ("", "_pixels")}  # fmt: skip
    assert all(0.0 <= v <= 1.0 for v in results.values())
    assert len(seen) == 2 * (1437 // 256)


@pytest.mark.slow  # needs the module's `representation` model (22 s to build cold): every other user of it is slow (fast-tier budget)
def test_linear_probe_host_memory_grows_with_the_data_only_in_the_frozen_protocol(representation):
    config, task, _, mesh = representation
    small = config.copy_and_resolve_references()
    small.data.digits_test_fraction = 0.5  # 898 train + 899 test instead of 1437 + 360: same total, other split
    small.data.num_classes = 10
    big = config.copy_and_resolve_references()
    big.data.image_size = 32  # 4x the pixels
    spec = dict(protocol="augmented", batch_size=64)
    assert build("linear_probe", spec, small, task, mesh).host_memory_bytes() == build(
        "linear_probe", spec, config, task, mesh).host_memory_bytes()  # fmt: skip
    frozen = dict(protocol="frozen", batch_size=64, include_pixels=True)
    assert build("linear_probe", frozen, big, task, mesh).host_memory_bytes() > build(
        "linear_probe", frozen, config, task, mesh).host_memory_bytes()  # fmt: skip
    with pytest.raises(ValueError, match="protocol='augmented'"):
        build("linear_probe", {**frozen, "max_host_bytes": 1000}, config, task, mesh)


def test_paper_configs_evaluate_with_the_official_protocols():
    repr_ = load_config("repr_imagenet").evals.linear_probe
    assert (repr_.protocol, repr_.modes, repr_.include_pixels) == ("augmented", ("no_head",), False)
    assert (repr_.lr, repr_.weight_decay, repr_.num_epochs, repr_.batch_size) == (3e-4, 0.0, 300, 8192)
    for name, saved in (("gen_afhq_cat", 5120), ("gen_celebahq", 29_952), ("gen_lsun_bedroom", 29_952)):
        evals = load_config(name).evals
        assert (evals.fid.num_samples, evals.fid.num_reference_samples, evals.fid.reference_shuffle_seed) == (1024, 1024, 0)
        assert (evals.fid50k.num_samples, evals.fid50k.num_reference_samples) == (50_000, 0)
        assert evals.fid_saved.num_samples == saved
        assert evals.fid.samplers == ("rk45", "euler") and evals.fid.weights == ("ema", "raw")
    for name in ("gen_cifar10", "joint_cifar10"):
        fid = load_config(name).evals.fid
        assert (fid.num_samples, fid.num_reference_samples, fid.samplers) == (50_000, 0, ("rk45", "euler"))
    accuracy = load_config("joint_cifar10").evals.class_accuracy
    assert (accuracy.splits, accuracy.shuffle_seed, accuracy.weights) == (("test", "train"), 0, ("ema", "raw"))
    tunable = load_config("joint_cifar10").evals.class_accuracy_std
    assert (tunable.splits, tunable.stds, tunable.shuffle_seed) == (("test", "train"), (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2), 0)
    for name in ("gen_cifar10", "gen_afhq_cat", "joint_cifar10"):  # evaluators of one kind never share metric names
        evals = load_config(name).evals
        kinds = [(spec.get("kind", key), spec.get("metric", "")) for key, spec in evals.items()]
        assert len(set(kinds)) == len(kinds), name
    assert load_config("joint_cifar10").eval_batch_size == 2000


def test_training_loop_runs_an_evaluator_on_each_of_its_weights():
    """weights=("ema", "raw") runs the evaluator on state.ema_params and on state.params; the names of the weights
    config.eval_use_ema does not choose get a suffix (so the two never overwrite each other)."""
    import types

    from lzn_jax import train

    class Probe:
        name, weights = "probe", ("ema", "raw")

        def run(self, params, step):
            yield "eval/value", float(params)

    class Plain(Probe):
        weights = None

    run = types.SimpleNamespace(config=types.SimpleNamespace(eval_use_ema=True))
    state = types.SimpleNamespace(params=1.0, ema_params=2.0)
    assert train._run_evals(run, [Probe()], state, 0) == {"eval/value": 2.0, "eval/value_raw": 1.0}
    assert train._run_evals(run, [Plain()], state, 0) == {"eval/value": 2.0}
    run.config.eval_use_ema = False
    assert train._run_evals(run, [Probe()], state, 0) == {"eval/value_ema": 2.0, "eval/value": 1.0}


def test_paper_evaluators_build_and_state_their_host_memory_without_the_data():
    """The scale rehearsal builds the paper configs' evaluators where ImageNet / CIFAR-10 are absent: building
    one and asking its host memory reads no data, and the figure does not scale with the dataset."""
    mesh = parallel.make_mesh(-1)
    config = load_config("repr_imagenet")
    config.data.data_dir = "/nonexistent"
    probe = build("linear_probe", dict(config.evals.linear_probe), config, tasks.build(config), mesh)
    assert probe.host_memory_bytes() == 3 * 8192 * 224 * 224 * 3 * 4  # three pipeline batches of one host
    joint = load_config("joint_cifar10")
    joint.data.data_dir = "/nonexistent"
    accuracy = build("class_accuracy", dict(joint.evals.class_accuracy), joint, tasks.build(joint), mesh)
    assert accuracy.host_memory_bytes() <= 2 * 1024**3 + 3 * 2000 * 32 * 32 * 3 * 4
