r"""Case study 2: unsupervised ImageNet representations, the official `configs/lzn1/case_study_2.py`.

SimCLRv2-style ResNet-50 (GroupNorm) with a 2-layer head to 256-d anchors; two augmented views; the latents of
view 1 (Euler, 20 steps, prior × 0.45) must flow back into their own view-2 zone. No auxiliary loss.

    python -m lzn_jax.main --config=configs/repr_imagenet.py --workdir=gs://BUCKET/lzn/repr_imagenet \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Paper: linear-probe accuracy above SimCLR's by 0.2 points and MoCo's by 9.3. The official run trains up to 5M
steps (num_train_steps) with linear probes every 1000 steps; `:runlocal` runs a tiny version.
"""

import ml_collections

from lzn_jax import configlib
from configs import common


def get_config(arg=None):
    config = configlib.base_config()
    config.task = "representation"
    config.latent_dim = 256
    config.num_classes = 1000
    config.data.update(dict(source="tfds", name="imagenet2012", test_split="validation", image_size=224, num_channels=3,
                            num_views=2, augmentation="simclr", eval_crop_fraction=0.875))  # fmt: skip
    config.encoder = common.model_section("resnet", depth=50, width_multiplier=1, sk_ratio=0.0, head_num_layers=2)
    config.zoning.update(dict(solver="euler", num_steps=20, prior_scale=0.45, cutoff=0.2))
    config.loss.update(dict(prob=0.0, cross_entropy=1.0))
    common.official_training(
        config, batch_size=8192, eval_batch_size=8192, checkpoint_every=2000, lr=dict(encoder=8e-4),
        ema=dict(encoder=0.9999), module_steps=dict(encoder=5_000_000),
    )  # fmt: skip
    config.eval_every_steps = 1000  # the probe's schedule
    config.evals = ml_collections.ConfigDict({
        # The paper's probe: 300 epochs of freshly augmented views streamed through the encoder (AdamW 3e-4, wd 0,
        # batch 8192), on EMA and raw weights as the official. `protocol="frozen"` is the fast option; the raw-pixel
        # baseline stays off (as frozen features it would hold 1.28M x 150528 floats on the host).
        "linear_probe": dict(protocol="augmented", modes=("no_head",), lr=3e-4, num_epochs=300,
                             batch_size=8192, weight_decay=0.0, include_pixels=False, weights=("ema", "raw")),
        "export": dict(every_steps=1_000_000, split="test", apply_head=False),
    })  # fmt: skip
    return common.variant(config, arg, image_size=32)
