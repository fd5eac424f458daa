"""The base config declares every key; bad configs fail before compute with the key and the fix."""

import json
import re

import ml_collections
import pytest

from lzn_jax import configlib


def generation_config():
    config = configlib.base_config()
    config.decoder.name = "ncsnpp_decoder"
    return config


def test_base_config_with_a_decoder_passes():
    configlib.check(generation_config())


def test_override_names_the_nearest_key():
    config = generation_config()
    configlib.override(config, **{"zoning.num_steps": 7, "data.image_size": 32})
    assert config.zoning.num_steps == 7 and config.data.image_size == 32
    with pytest.raises(ValueError, match="Did you mean 'batch_size'"):
        configlib.override(config, batch_sizee=3)
    with pytest.raises(ValueError, match="Did you mean 'num_steps'"):
        configlib.override(config, **{"zoning.num_step": 3})


@pytest.mark.parametrize(
    "updates, message",
    [
        ({"task": "segmentation"}, "config.task='segmentation'"),
        ({"batch_size": 0}, "config.batch_size must be a positive integer"),
        # Each of these was accepted: 0 kept no checkpoint at all (Orbax's LatestN(0) deletes every save, and the
        # run ended "successfully" with none), 0 evaluation rows divided by zero after training, 0 skips stopped
        # the run at its first step with a nonsense message.
        ({"keep_checkpoints": 0}, "config.keep_checkpoints must be a positive integer"),
        ({"eval_batch_size": 0}, "config.eval_batch_size must be a positive integer"),
        ({"max_consecutive_skips": 0}, "config.max_consecutive_skips must be a positive integer"),
        ({"dtype": "float31"}, "config.dtype='float31' is not a floating-point dtype"),  # was a TypeError in build
        ({"dtype": "int8"}, "config.dtype='int8' is not a floating-point dtype"),
        ({"zoning.cutoff": 1.5}, "cutoff"),
        ({"zoning.solver": "rk4"}, "solver"),
        ({"ema.encoder": 1.5}, "config.ema.encoder"),
        ({"decoder.name": ""}, "needs config.decoder.name"),
        ({"conditional": True}, "needs config.label_anchors.name"),
        ({"task": "representation"}, "needs config.encoder.name"),
    ],
)
def test_bad_values_fail_with_the_key(updates, message):
    config = configlib.override(generation_config(), **updates)
    with pytest.raises(ValueError, match=re.escape(message)):
        configlib.check(config)


def test_wrong_types_are_refused_by_the_config_itself():
    with pytest.raises(TypeError, match="batch_size"):
        configlib.override(generation_config(), batch_size=12.5)


def test_unknown_top_level_key_is_rejected():
    config = generation_config()
    config.batchsize = 4
    with pytest.raises(ValueError, match="Did you mean 'batch_size'"):
        configlib.check(config)


def with_evals(encoder="", **evals):
    config = generation_config()
    config.encoder.name = encoder
    config.evals = ml_collections.ConfigDict(evals)
    return config


@pytest.mark.parametrize(
    "evals, error, message",
    [
        ({"sampels": {}}, ValueError, "unknown evaluator 'sampels' (did you mean 'samples'?)"),
        ({"grid": {"kind": "sample"}}, ValueError, "unknown evaluator 'sample' (did you mean 'samples'?)"),
        ({"samples": {"per_clas": 3}}, ValueError,
         "Unknown config key 'per_clas' in config.evals.samples. Did you mean 'per_class'?"),
        ({"samples": {"every_step": 3}}, ValueError, "Did you mean 'every_steps'?"),
        ({"samples": {"per_class": 2.5}}, ValueError, "config.evals.samples.per_class=2.5 is a float"),
        ({"class_accuracy": {"splits": "test"}}, ValueError, "config.evals.class_accuracy.splits='test' is a str"),
        ({"samples": {"every_steps": "500"}}, ValueError, "config.evals.samples.every_steps='500' must be an integer"),
        ({"fid": {"every_steps": 10}}, ValueError, "config.evals.fid.inception_weights is not set"),
        ({"fid": {"every_steps": 10, "inception_weights": "/nonexistent/pt_inception.pth"}}, FileNotFoundError,
         "config.evals.fid.inception_weights='/nonexistent/pt_inception.pth' does not exist"),
        # A split name that is not a logical split failed only when the evaluator first ran, hours into a run.
        ({"class_accuracy": {"splits": ("test", "validation")}}, ValueError,
         "config.evals.class_accuracy.splits=('test', 'validation'): a split is one of ('train', 'test')"),
        ({"export": {"split": "val"}}, ValueError, "config.evals.export.split='val': a split is one of"),
    ],
)
def test_bad_evaluator_settings_fail_in_check(evals, error, message):
    """The bug: config.evals was free-form until the evaluators were built, after the train step had compiled
    and run and the workdir existed, so a typo cost a run's first interval."""
    with pytest.raises(error) as info:
        configlib.check(with_evals(**evals))
    assert message in str(info.value)


def test_documented_none_settings_pass_and_label_scores_need_labels():
    """`shuffle_seed=None` (read the split in its own order) was refused as "a NoneType; takes a int"; and a
    linear probe on unlabeled data (num_classes=1) reported accuracy 1.0 for any encoder."""
    configlib.check(with_evals(class_accuracy={"shuffle_seed": None, "every_steps": -1},
                               fid={"reference_shuffle_seed": None, "every_steps": -1}))  # fmt: skip
    unlabeled = with_evals(linear_probe={"every_steps": 5})
    unlabeled.num_classes = 1
    with pytest.raises(ValueError, match=r"config\.evals\.linear_probe \('linear_probe'\) scores against the labels"):
        configlib.check(unlabeled)
    unlabeled.evals.linear_probe.every_steps = -1
    configlib.check(unlabeled)


def test_good_evaluator_settings_pass(tmp_path):
    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"")
    configlib.check(with_evals(
        encoder="ncsnpp_encoder",  # reconstruction needs one
        samples={"every_steps": 5, "per_class": 2, "samplers": ["euler"]},  # a list where the default is a tuple
        strip={"kind": "reconstruction", "num": 8, "repeats": 1},
        fid={"every_steps": 10, "inception_weights": str(weights), "batch_size": 64},  # default None: any value
        fid_off={"kind": "fid", "every_steps": -1},  # switched off: its weights need not exist
    ))  # fmt: skip


def test_an_evaluator_the_composition_cannot_serve_fails_in_check():
    """The bug: an enabled evaluator whose prediction function the task lacks (a reconstruction without an image
    encoder, class accuracy without labels) failed when the evaluators were built, after setup had built and
    initialised the state and written the workdir."""
    with pytest.raises(ValueError, match=r"config\.evals\.strip \('reconstruction'\) needs an image encoder .* "
                       r"Switch it off with config\.evals\.strip\.every_steps=-1"):  # fmt: skip
        configlib.check(with_evals(strip={"kind": "reconstruction"}))
    with pytest.raises(ValueError, match=r"'sample_accuracy'\) needs a label-conditional image decoder"):
        configlib.check(with_evals(sample_accuracy={"per_class": 2}))
    configlib.check(with_evals(strip={"kind": "reconstruction", "every_steps": -1}))  # switched off: fine


def test_evaluator_keys_come_from_the_class_signatures(monkeypatch):
    """A keyword argument added to an evaluator is a valid key at once (no second list to update)."""
    from lzn_jax.evaluators import generation

    class Samples(generation.Samples):
        def __init__(self, *, sample_fn, data_cfg, workdir, writer=None, new_setting=3, **kwargs):
            super().__init__(sample_fn=sample_fn, data_cfg=data_cfg, workdir=workdir, writer=writer, **kwargs)

    monkeypatch.setattr(generation, "Samples", Samples)
    configlib.check(with_evals(samples={"new_setting": 4, "anything": "goes to **kwargs"}))
    with pytest.raises(ValueError, match="new_setting=4.5 is a float"):
        configlib.check(with_evals(samples={"new_setting": 4.5}))


def test_num_classes_is_one_field_under_two_names():
    config = configlib.base_config()
    config.num_classes = 3
    assert config.data.num_classes == 3
    config.data.num_classes = 1  # `--config.data.num_classes=1` sets the same fact
    assert config.num_classes == 1
    saved = configlib.from_json(config.to_json_best_effort())  # config.json as lzn_jax.main writes it
    saved.num_classes = 5
    assert saved.data.num_classes == 5


def test_num_classes_that_disagree_are_refused_with_both_keys():
    # Read back without from_json (two plain values, as any JSON reader gives them), then made to disagree.
    unlinked = ml_collections.ConfigDict(json.loads(generation_config().to_json_best_effort()))
    unlinked.data.num_classes = 1
    with pytest.raises(ValueError, match=r"config.num_classes=10 but config.data.num_classes=1: they are one fact"):
        configlib.check(unlinked)


def test_resume_changes_name_the_settings_that_change_what_is_trained():
    stored = generation_config()
    stored_json = stored.to_json_best_effort()
    now = generation_config()
    now.seed, now.optim.lr.decoder, now.data.image_size = 3, 2e-4, 32  # change what is trained
    now.num_train_steps, now.mesh.fsdp, now.eval_batch_size = 5000, True, 64  # schedule, layout, evaluation
    now.evals = ml_collections.ConfigDict({"samples": {"every_steps": 10}})
    assert configlib.resume_changes(stored_json, now) == {
        "data.image_size": (16, 32), "optim.lr.decoder": (1e-4, 2e-4), "seed": (0, 3)}  # fmt: skip
    now.checkpoint.allow_changes = ("optim.lr", "seed")  # sections or keys, changed on purpose
    assert configlib.resume_changes(stored_json, now) == {"data.image_size": (16, 32)}
    older = json.loads(stored_json)
    del older["precision"]  # a key a config.json of another version lacks is not compared
    now.precision = "default"
    assert configlib.resume_changes(json.dumps(older), now) == {"data.image_size": (16, 32)}
