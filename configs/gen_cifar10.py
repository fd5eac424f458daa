r"""Case study 1: unconditional CIFAR-10 generation, the official `configs/lzn1/case_study_1_cifar10.py`.

NCSN++ image encoder → LZN latents (DPM-Solver++, 20 steps) → NCSN++ rectified-flow decoder. Sampling starts
from a latent drawn from N(0, I).

    python -m lzn_jax.main --config=configs/gen_cifar10.py --workdir=gs://BUCKET/lzn/gen_cifar10 \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Paper: FID 2.59 (RF baseline 2.76). The RF baseline (no encoder, so no reconstructions):
`--config.encoder.name='' --config.evals.reconstruction.every_steps=-1`.
"""

from configs import common
from lzn_jax import configlib


def get_config(arg=None):
    config = configlib.base_config()
    config.task = "generation"
    config.conditional = False
    config.latent_dim = 200
    config.num_classes = 1
    config.data.update(dict(source="tfds", name="cifar10", image_size=32, num_channels=3, augmentation="flip"))  # fmt: skip
    config.encoder = common.ncsnpp_encoder(common.CIFAR10_TRUNK)
    config.decoder = common.ncsnpp_decoder(common.CIFAR10_TRUNK)
    config.zoning.update(dict(solver="dpm_solver++", num_steps=20))
    common.official_training(
        config, batch_size=2000, eval_batch_size=2000, checkpoint_every=1000,
        lr=dict(encoder=2.5e-5, decoder=1e-3), ema=dict(encoder=0.999999, decoder=0.999999),
        module_steps=dict(encoder=50_000, decoder=50_000),
    )  # fmt: skip
    config.evals = common.generation_evals(config, every=5000, per_class=100, recon_num=2000, recon_repeats=20,
                                           fid_num=50_000)  # fmt: skip
    return common.variant(config, arg)
