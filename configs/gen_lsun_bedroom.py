r"""Case study 1: unconditional LSUN-Bedroom 256×256 generation, the official `configs/lzn1/case_study_1_lsunbedroom.py`.

NCSN++ encoder with anchor heads at 64..4 px → LZN latents (DPM-Solver++, 20 steps) → NCSN++ rectified-flow
decoder with FIR resampling, progressive skips and Gaussian-Fourier time features. Images come from a folder.

    python -m lzn_jax.main --config=configs/gen_lsun_bedroom.py --workdir=gs://BUCKET/lzn/gen_lsun_bedroom \
        --config.data.data_dir=gs://BUCKET/LSUN
"""

from configs import common
from lzn_jax import configlib


def get_config(arg=None):
    config = configlib.base_config()
    config.task = "generation"
    config.conditional = False
    config.latent_dim = 200
    config.num_classes = 1
    config.data.update(dict(source="image_folder", name="lsun_bedroom", data_dir="gs://BUCKET/LSUN", train_split="bedroom_train",
                            test_split="bedroom_val", image_size=256, num_channels=3, num_classes=1, augmentation="flip"))  # fmt: skip
    common.hq256_models(config)
    config.zoning.update(dict(solver="dpm_solver++", num_steps=20))
    common.official_training(
        config, batch_size=256, eval_batch_size=25, checkpoint_every=2000,
        lr=dict(encoder=2e-6, decoder=2e-4), ema=dict(encoder=0.99999, decoder=0.99999),
        module_steps=dict(encoder=2_050_000, decoder=2_050_000),
    )  # fmt: skip
    config.evals = common.generation_evals(every=10_000, per_class=256, recon_num=256, recon_repeats=20,
                                           fid_num=50000, fid_reference_num=1024)  # fmt: skip
    return common.runlocal(config, image_size=32) if arg == "runlocal" else config
