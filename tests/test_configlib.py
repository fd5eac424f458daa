"""The base config declares every key; bad configs fail before compute with the key and the fix."""

import re

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
