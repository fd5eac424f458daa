r"""Case study 1: unconditional CelebA-HQ 256×256 generation, the official `configs/lzn1/case_study_1_celebahq.py`.

NCSN++ encoder with anchor heads at 64..4 px → LZN latents (DPM-Solver++, 20 steps) → NCSN++ rectified-flow
decoder with FIR resampling, progressive skips and Gaussian-Fourier time features. Images come from a folder.

    The image folder is required: set --config.data.data_dir (local or gs://).

    python -m lzn_jax.main --config=configs/gen_celebahq.py --workdir=gs://BUCKET/lzn/gen_celebahq \
        --config.data.data_dir=gs://BUCKET/CelebA-HQ-1024
"""

from configs import common


def get_config(arg=None):
    config = common.hq256_generation(
        name="celebahq", data_dir="", train_split="", test_split="", steps=350_000,
        encoder_lr=4e-6, ema=0.9999, eval_batch_size=256, saved_num=29_952,
    )  # fmt: skip
    return common.variant(config, arg, image_size=32)
