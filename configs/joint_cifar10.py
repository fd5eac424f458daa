r"""Case study 3: CIFAR-10 joint generation and classification, the official `configs/lzn1/case_study_3.py`.

NCSN++ image encoder → LZN latents (DPM-Solver++, 20 steps) → class-conditional NCSN++ rectified-flow decoder,
and 10 label anchors whose zones the image latents must reach (Euler, 100 steps, class weights, cut-off 0.2).

    python -m lzn_jax.main --config=configs/joint_cifar10.py --workdir=gs://BUCKET/lzn/joint_cifar10 \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Paper: FID 2.59 (rk45) and 94.9 % test accuracy. `:runlocal` runs a tiny version (`configs/common.py`).
"""


from configs import common
from lzn_jax import configlib


def get_config(arg=None):
    config = configlib.base_config()
    config.task = "generation"
    config.conditional = True
    config.latent_dim = 200
    config.num_classes = 10
    config.data.update(dict(source="tfds", name="cifar10", image_size=32, num_channels=3, augmentation="flip"))  # fmt: skip
    config.encoder = common.ncsnpp_encoder(common.CIFAR10_TRUNK)
    config.decoder = common.ncsnpp_decoder(common.CIFAR10_TRUNK)
    config.label_anchors = common.model_section("label_anchors")
    config.zoning.update(dict(solver="dpm_solver++", num_steps=20, label_solver="euler", label_num_steps=100, cutoff=0.2))
    common.official_training(
        config, batch_size=2000, eval_batch_size=2000, checkpoint_every=1000,
        lr=dict(encoder=5e-5, decoder=2e-3, label_anchors=1e-4),
        ema=dict(encoder=0.999999, decoder=0.999999, label_anchors=0.999999),
        module_steps=dict(encoder=200_000, decoder=60_000, label_anchors=200_000),
    )  # fmt: skip
    config.evals = common.generation_evals(config, every=5000, per_class=100, recon_num=2000, recon_repeats=20,
                                           fid_num=50_000, classes=True)  # fmt: skip
    return common.variant(config, arg)
