r"""Case study 1: unconditional AFHQ-Cat 256×256 generation, the official `configs/lzn1/case_study_1_afhqcat.py`.

NCSN++ encoder with anchor heads at 64..4 px → LZN latents (DPM-Solver++, 20 steps) → NCSN++ rectified-flow
decoder with FIR resampling, progressive skips and Gaussian-Fourier time features. Images come from a folder.

    The image folder is required: set --config.data.data_dir (local or gs://).

    python -m lzn_jax.main --config=configs/gen_afhq_cat.py --workdir=gs://BUCKET/lzn/gen_afhq_cat \
        --config.data.data_dir=gs://BUCKET/AFHQ
"""

from configs import common


def get_config(arg=None):
    config = common.hq256_generation(
        name="afhq_cat", data_dir="", train_split="train/cat", test_split="val/cat", steps=60_000,
        encoder_lr=2e-6, ema=0.999999, eval_batch_size=256, saved_num=5120,
    )  # fmt: skip
    return common.variant(config, arg, image_size=32)
