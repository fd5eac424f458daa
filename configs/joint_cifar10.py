"""CIFAR-10 joint generation and classification (LZN case study 3).

Mirrors the official `configs/lzn1/case_study_3.py`: NCSN++ encoder (image -> anchor), class-conditional NCSN++
rectified-flow decoder (latent + one-hot label + time -> velocity) and 10 learnable label anchors, all in a
200-d latent space.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.latent_dim = 200

    config.data = ml_collections.ConfigDict()
    config.data.image_size = 32
    config.data.num_channels = 3
    config.data.num_classes = 10

    # The official encoder and decoder share one `config.model` section.
    trunk = dict(
        nf=128,
        ch_mult=(1, 2, 2, 2),
        num_res_blocks=4,
        attn_resolutions=(16,),
        dropout=0.15,
        resamp_with_conv=True,
        fir=False,
        fir_kernel=(1, 3, 3, 1),
        skip_rescale=True,
        resblock_type="biggan",
        progressive_input="none",
        progressive_combine="sum",
        init_scale=0.0,
        nonlinearity="swish",
    )

    config.encoder = ml_collections.ConfigDict(
        dict(
            name="ncsnpp_encoder",
            latent_dim=config.get_ref("latent_dim"),
            num_base_channels=20,
            num_base_units=200,
            num_latent_transformation_layers=2,
            **trunk,
        )
    )

    config.decoder = ml_collections.ConfigDict(
        dict(
            name="ncsnpp_decoder",
            latent_dim=config.get_ref("latent_dim"),
            num_classes=config.data.get_ref("num_classes"),
            time_conditional=True,
            embedding_type="positional",
            progressive="none",
            scale_by_sigma=False,
            **trunk,
        )
    )

    config.label_anchors = ml_collections.ConfigDict(
        dict(
            name="label_anchors",
            num_classes=config.data.get_ref("num_classes"),
            latent_dim=config.get_ref("latent_dim"),
        )
    )
    return config
