r"""Case study 1: unconditional LSUN-Bedroom 256×256 generation, the official `configs/lzn1/case_study_1_lsunbedroom.py`.

NCSN++ encoder with anchor heads at 64..4 px → LZN latents (DPM-Solver++, 20 steps) → NCSN++ rectified-flow
decoder with FIR resampling, progressive skips and Gaussian-Fourier time features. Images come from a folder.

    The image folder is required: set --config.data.data_dir (local or gs://).

    python -m lzn_jax.main --config=configs/gen_lsun_bedroom.py --workdir=gs://BUCKET/lzn/gen_lsun_bedroom \
        --config.data.data_dir=gs://BUCKET/LSUN
"""

from configs import common


def get_config(arg=None):
    config = common.hq256_generation(
        name="lsun_bedroom", data_dir="", train_split="bedroom_train", test_split="bedroom_val", steps=2_050_000,
        encoder_lr=2e-6, ema=0.99999, eval_batch_size=25, saved_num=29_952,
    )  # fmt: skip
    return common.variant(config, arg, image_size=32)
