r"""Case study 1 on scikit-learn's digits: unconditional rectified-flow generation with LZN latents, on a CPU.

    python -m lzn_jax.main --config=configs/digits_gen.py --workdir=workdirs/digits_gen

The plain rectified-flow baseline (no encoder, so no reconstructions):
`--config.encoder.name='' --config.evals.reconstruction.every_steps=-1`.
"""

import ml_collections

from configs import common
from lzn_jax import configlib


def get_config(arg=None):
    config = configlib.base_config()
    config.task = "generation"
    config.conditional = False
    config.latent_dim = 32
    common.digits_data(config)
    config.encoder = common.model_section("ncsnpp_encoder", num_base_channels=4, num_base_units=64,
                                          num_latent_transformation_layers=2, **common.DIGITS_TRUNK)  # fmt: skip
    config.decoder = common.model_section("ncsnpp_decoder", **common.DIGITS_TRUNK)
    config.batch_size = 64
    common.schedule(config, steps=1500, log=50, evals=500, checkpoint=500)
    config.optim.lr.update(encoder=1e-3, decoder=2e-3)
    config.optim.warmup_steps = 100
    config.ema.update(encoder=0.995, decoder=0.995)
    config.eval_batch_size = 64
    config.evals = ml_collections.ConfigDict({
        "samples": dict(num=64, samplers=("euler", "rk45")),
        "reconstruction": dict(num=64, repeats=2, sampler="euler"),
    })  # fmt: skip
    return common.variant(config, arg)
