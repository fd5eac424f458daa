"""Converted official NCSN++ encoder/decoder weights reproduce the official PyTorch outputs.

Every `ncsnpp_small_*.npz` in the reference folder is checked (see tests/conftest.py): the models are built only
from what the file stores (`config_json` and the scalar keys), so files of other sizes drop in unchanged.
"""

import json

import numpy as np
import pytest

from lzn_jax import convert
from lzn_jax.models import ncsnpp

RTOL = 1e-4  # float32 against a float64 reference


def _state_dict(ref, prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: ref[k] for k in ref.files if k.startswith(prefix)}


def _nhwc(images_nchw: np.ndarray) -> np.ndarray:
    return np.transpose(images_nchw, (0, 2, 3, 1))


def _assert_close(actual, expected, what: str):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    scale = np.abs(expected).max()
    err = np.abs(actual - expected).max() / scale
    assert err <= RTOL, f"{what}: max |error| / max |reference| = {err:.2e} > {RTOL:g}"


@pytest.fixture
def reference(ncsnpp_small_file):
    ref = np.load(ncsnpp_small_file)
    config = json.loads(str(ref["config_json"]))
    return ref, config["model"], config["data"]


def test_encoder_matches_official(reference):
    ref, model_cfg, data_cfg = reference
    key = "encoder_latent_transformation_resolutions"  # optional: absent means a head at every resolution
    resolutions = ref[key] if key in ref.files else None
    encoder = ncsnpp.NCSNPPEncoder(
        latent_dim=int(ref["latent_dim"]),
        num_base_channels=int(ref["encoder_num_base_channels"]),
        num_base_units=int(ref["encoder_num_base_units"]),
        num_latent_transformation_layers=int(ref["encoder_num_latent_layers"]),
        latent_transformation_resolutions=None if resolutions is None else tuple(int(r) for r in resolutions),
        **convert.official_ncsnpp_fields(model_cfg, decoder=False),
    )
    params = convert.convert_module(
        encoder,
        _state_dict(ref, "encoder/"),
        image_size=data_cfg["image_size"],
        num_channels=data_cfg["num_channels"],
        what="encoder",
    )
    out = encoder.apply({"params": params}, _nhwc(ref["in_x"]), train=False)
    _assert_close(out, ref["out_encoder"], "encoder anchors")


@pytest.mark.slow  # 18 s cold on 2 cores (fast-tier budget)
def test_decoder_matches_official(reference):
    ref, model_cfg, data_cfg = reference
    num_classes = int(ref["num_classes"])
    decoder = ncsnpp.NCSNPPDecoder(
        latent_dim=int(ref["latent_dim"]),
        num_classes=num_classes,
        **convert.official_ncsnpp_fields(model_cfg, decoder=True),
    )
    params = convert.convert_module(
        decoder,
        _state_dict(ref, "decoder/"),
        image_size=data_cfg["image_size"],
        num_channels=data_cfg["num_channels"],
        what="decoder",
    )
    label = ref["in_label"] if num_classes else None
    out = decoder.apply(
        {"params": params}, ref["in_latent"], label, ref["in_t"], _nhwc(ref["in_xt"]), train=False
    )
    _assert_close(np.transpose(out, (0, 3, 1, 2)), ref["out_decoder"], "decoder velocity")
