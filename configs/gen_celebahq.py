"""CelebA-HQ 256x256 generation (LZN case study 1).

Mirrors the official `configs/lzn1/case_study_1_celebahq.py`: an NCSN++ encoder with anchor heads at 64..4
pixels (image -> 200-d anchor) and an unconditional NCSN++ rectified-flow decoder with FIR resampling, progressive
input/output skips and Gaussian Fourier time features (latent + time -> velocity). The architecture is the same in
all three official 256x256 configs (AFHQ-Cat, CelebA-HQ, LSUN-Bedroom); only their training settings differ.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.latent_dim = 200

    config.data = ml_collections.ConfigDict()
    config.data.image_size = 256
    config.data.num_channels = 3

    # The official encoder and decoder share one `config.model` section.
    trunk = dict(
        nf=128,
        ch_mult=(1, 1, 2, 2, 2, 2, 2),
        num_res_blocks=2,
        attn_resolutions=(16,),
        dropout=0.0,
        resamp_with_conv=True,
        fir=True,
        fir_kernel=(1, 3, 3, 1),
        skip_rescale=True,
        resblock_type="biggan",
        progressive_input="input_skip",
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
            latent_transformation_resolutions=(64, 32, 16, 8, 4),
            **trunk,
        )
    )

    config.decoder = ml_collections.ConfigDict(
        dict(
            name="ncsnpp_decoder",
            latent_dim=config.get_ref("latent_dim"),
            num_classes=0,
            time_conditional=True,
            embedding_type="fourier",
            fourier_scale=16.0,
            progressive="output_skip",
            # Upstream divides the network output by 999·t (score_sde's VE convention, kept in LZN's decoder).
            scale_by_sigma=True,
            **trunk,
        )
    )
    return config
