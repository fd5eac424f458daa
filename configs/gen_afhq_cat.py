r"""Case study 1: unconditional AFHQ-Cat 256×256 generation, the official `configs/lzn1/case_study_1_afhqcat.py`.

NCSN++ encoder with anchor heads at 64..4 px → LZN latents (DPM-Solver++, 20 steps) → NCSN++ rectified-flow
decoder with FIR resampling, progressive skips and Gaussian-Fourier time features. Images come from a folder.

    python -m lzn_jax.main --config=configs/gen_afhq_cat.py --workdir=gs://BUCKET/lzn/gen_afhq_cat \
        --config.data.data_dir=gs://BUCKET/AFHQ
"""

from configs import common
from lzn_jax import configlib


def get_config(arg=None):
    config = configlib.base_config()
    config.task = "generation"
    config.conditional = False
    config.latent_dim = 200
    config.num_classes = 1
    config.data.update(dict(source="image_folder", name="afhq_cat", data_dir="gs://BUCKET/AFHQ", train_split="train/cat",
                            test_split="val/cat", image_size=256, num_channels=3, num_classes=1, augmentation="flip"))  # fmt: skip
    common.hq256_models(config)
    config.zoning.update(dict(solver="dpm_solver++", num_steps=20))
    common.official_training(
        config, batch_size=256, eval_batch_size=256, checkpoint_every=2000,
        lr=dict(encoder=2e-6, decoder=2e-4), ema=dict(encoder=0.999999, decoder=0.999999),
        module_steps=dict(encoder=60_000, decoder=60_000),
    )  # fmt: skip
    config.evals = common.generation_evals(every=10_000, per_class=256, recon_num=256, recon_repeats=20,
                                           fid_num=5120, fid_reference_num=1024)  # fmt: skip
    return common.runlocal(config, image_size=32) if arg == "runlocal" else config
