"""ImageNet representation learning (LZN case study 2).

Mirrors the official `configs/lzn1/case_study_2.py`: a SimCLRv2-style ResNet-50 (GroupNorm, width 1, no selective
kernels) whose 2-layer contrastive head maps the pooled 2048-d feature to a 256-d anchor. There is no decoder.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.latent_dim = 256

    config.data = ml_collections.ConfigDict()
    config.data.image_size = 224
    config.data.num_channels = 3

    config.encoder = ml_collections.ConfigDict(
        dict(
            name="resnet",
            latent_dim=config.get_ref("latent_dim"),
            depth=50,
            width_multiplier=1,
            sk_ratio=0.0,
            head_num_layers=2,
            remat=False,
        )
    )
    return config
