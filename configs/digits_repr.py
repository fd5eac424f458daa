r"""Case study 2 on scikit-learn's digits: LZN representation learning without labels, on a CPU.

A small ResNet-18 (base width 32, small-image stem) with a 2-layer head to 128-d anchors; two augmented views
(small rotations, shifts and zooms); the case-study-2 loss; 600 steps (about 17 minutes on 2 CPU cores). The
linear probe on its features is compared with one on raw pixels, and with SimCLR trained on the same encoder,
views and budget (configs/digits_simclr.py). The probe z-scores every feature with the train split's statistics
(pixels too): a probe on raw features of this small data set underfits within its budget.

    python -m lzn_jax.main --config=configs/digits_repr.py --workdir=workdirs/digits_repr
"""

import ml_collections

from configs import common
from lzn_jax import configlib

ENCODER = dict(name="resnet", depth=18, base_width=32, small_images=True, head_num_layers=2)


def get_config(arg=None):
    config = configlib.base_config()
    config.task = "representation"
    config.latent_dim = 128  # the head's GroupNorm has 32 groups: 4 features each
    common.digits_data(config, num_views=2, augmentation="affine")
    config.encoder = common.model_section(**ENCODER)
    config.zoning.update(dict(solver="euler", num_steps=20, prior_scale=0.45, cutoff=0.2))
    config.loss.update(dict(prob=0.0, cross_entropy=1.0))
    config.batch_size = 128
    common.schedule(config, steps=600, log=50, evals=300, checkpoint=300)
    config.optim.lr.encoder = 1e-3
    config.optim.warmup_steps = 100
    config.ema.encoder = 0.995
    config.eval_batch_size = 256
    config.evals = ml_collections.ConfigDict({
        # The fast frozen-features probe (eval/linear_probe_frozen_*), with the raw-pixel baseline.
        "linear_probe": dict(protocol="frozen", modes=("no_head", "head"), include_pixels=True,
                             lr=1e-3, num_epochs=300, batch_size=64, standardize=True),
    })  # fmt: skip
    return common.variant(config, arg)
