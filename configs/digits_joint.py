r"""Case study 3 on scikit-learn's digits: joint label-conditional generation and classification, on a CPU.

Image encoder → LZN latents (DPM-Solver++, 20 steps) → NCSN++ rectified-flow decoder, and label anchors whose
zones the image latents must reach (Euler, 100 steps, class weights). The README's main command:

    python -m lzn_jax.main --config=configs/digits_joint.py --workdir=workdirs/digits_joint

The plain rectified-flow baseline (no encoder, no labels, so neither class nor sample accuracy):
`--config.conditional=False --config.encoder.name='' --config.evals.class_accuracy.every_steps=-1
--config.evals.sample_accuracy.every_steps=-1`.
"""

import ml_collections

from configs import common
from lzn_jax import configlib


def get_config(arg=None):
    config = configlib.base_config()
    config.task = "generation"
    config.conditional = True
    config.latent_dim = 32
    common.digits_data(config)
    config.encoder = common.model_section("ncsnpp_encoder", num_base_channels=4, num_base_units=64,
                                          num_latent_transformation_layers=2, **common.DIGITS_TRUNK)  # fmt: skip
    config.decoder = common.model_section("ncsnpp_decoder", **common.DIGITS_TRUNK)
    config.label_anchors = common.model_section("label_anchors")
    config.batch_size = 64
    common.schedule(config, steps=1500, log=50, evals=500, checkpoint=500)
    config.optim.lr.update(encoder=1e-3, decoder=2e-3, label_anchors=1e-3)
    config.optim.warmup_steps = 100
    config.ema.update(encoder=0.995, decoder=0.995, label_anchors=0.995)
    config.eval_batch_size = 360  # the whole test split zoned together, as one batch
    config.evals = ml_collections.ConfigDict({
        # eval/accuracy with deterministic latents (prior std 0, the official tunable-std evaluation);
        # eval/accuracy_std1 with the official ClassAccuracy's std-1 prior noise.
        "class_accuracy": dict(splits=("test",), stds=(0.0, 1.0)),
        "samples": dict(per_class=10, samplers=("euler",)),
        # how recognisable label-conditional samples are to a classifier trained on real digits (at the end)
        "sample_accuracy": dict(every_steps=1500, per_class=50),
    })  # fmt: skip
    return common.variant(config, arg)
