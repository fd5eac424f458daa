"""Architecture presets and schedules shared by the config files (imported as `configs.common`; not a config).

The NCSN++ presets are the official `config.model` sections: one trunk shared by encoder and decoder.
"""

import dataclasses
import inspect
import typing

import ml_collections
from ml_collections import config_dict

from lzn_jax import evaluators, models

# Module fields a config section leaves out: the composition fills the latent and label sizes
# (tasks.common.complete_section), the config's `dtype` and `precision` the numerics (tasks.common.build_module).
DERIVED_FIELDS = ("latent_dim", "num_classes", "dtype", "param_dtype", "precision")


def model_section(name, **fields):
    """A model section declaring every field of the module named `name`: `fields`, else the module's default.

    Only a declared key can be set from the command line (`--config.encoder.stage_blocks='(1, 1, 1, 1)'`): a
    section that named just the fields it changed refused the others as "Unknown config key". A field whose
    default is None becomes a typed placeholder (None until set), so a flag can still give it a value.
    """
    cls = models.model_class(name)
    hints = typing.get_type_hints(cls)
    section = {"name": name}
    for field in dataclasses.fields(cls):
        if not field.init or field.name in ("parent", "name", *DERIVED_FIELDS):
            continue
        if field.name in fields:
            section[field.name] = fields.pop(field.name)
        elif field.default is None:
            section[field.name] = config_dict.placeholder(_flag_type(hints[field.name]))
        elif field.default is not dataclasses.MISSING:
            section[field.name] = field.default
    if fields:  # models.build names the nearest valid field
        models.build({"name": name, **fields})
    return ml_collections.ConfigDict(section)


def _flag_type(hint) -> type:
    """The type a flag parses for an `X | None` field (tuple for `tuple[int, ...] | None`)."""
    kinds = [typing.get_origin(arg) or arg for arg in typing.get_args(hint) if arg is not type(None)]
    return kinds[0] if len(kinds) == 1 and isinstance(kinds[0], type) else object

# ------------------------------------------------------------------ NCSN++ of the official configs

CIFAR10_TRUNK = dict(
    nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,), dropout=0.15, resamp_with_conv=True,
    fir=False, fir_kernel=(1, 3, 3, 1), skip_rescale=True, resblock_type="biggan", progressive_input="none",
    progressive_combine="sum", init_scale=0.0, nonlinearity="swish",
)  # fmt: skip

# AFHQ-Cat, CelebA-HQ and LSUN-Bedroom (256×256) share the same architecture upstream.
HQ256_TRUNK = dict(
    nf=128, ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.0,
    resamp_with_conv=True, fir=True, fir_kernel=(1, 3, 3, 1), skip_rescale=True, resblock_type="biggan",
    progressive_input="input_skip", progressive_combine="sum", init_scale=0.0, nonlinearity="swish",
)  # fmt: skip


def ncsnpp_encoder(trunk, **fields):
    """The official NCSN++ image encoder (latent_dim follows config.latent_dim)."""
    official = dict(num_base_channels=20, num_base_units=200, num_latent_transformation_layers=2)
    return model_section("ncsnpp_encoder", **{**official, **trunk, **fields})


def ncsnpp_decoder(trunk, **fields):
    """The official NCSN++ rectified-flow decoder (latent and label inputs follow the composition)."""
    official = dict(time_conditional=True, embedding_type="positional", progressive="none", scale_by_sigma=False)
    return model_section("ncsnpp_decoder", **{**official, **trunk, **fields})


def hq256_models(config):
    """Encoder with anchor heads at 64..4 px and a Fourier-time, FIR, progressive decoder (scale_by_sigma)."""
    config.encoder = ncsnpp_encoder(HQ256_TRUNK, latent_transformation_resolutions=(64, 32, 16, 8, 4))
    # Upstream divides the output by 999·t (score_sde's VE convention, kept in LZN's decoder).
    config.decoder = ncsnpp_decoder(HQ256_TRUNK, embedding_type="fourier", fourier_scale=16.0, progressive="output_skip",
                                    scale_by_sigma=True)  # fmt: skip


def hq256_generation(*, name, data_dir, train_split, test_split, steps, encoder_lr, ema, eval_batch_size, saved_num):
    """Case study 1 at 256×256 (AFHQ-Cat, CelebA-HQ, LSUN-Bedroom): the official settings that differ per set."""
    from lzn_jax import configlib  # configs import this module; the base config lives in the package

    config = configlib.base_config()
    config.task = "generation"
    config.conditional = False
    config.latent_dim = 200
    config.num_classes = 1
    config.data.update(dict(source="image_folder", name=name, data_dir=data_dir, train_split=train_split,
                            test_split=test_split, image_size=256, num_channels=3, augmentation="flip"))  # fmt: skip
    hq256_models(config)
    config.zoning.update(dict(solver="dpm_solver++", num_steps=20))
    official_training(
        config, batch_size=256, eval_batch_size=eval_batch_size, checkpoint_every=2000,
        lr=dict(encoder=encoder_lr, decoder=2e-4), ema=dict(encoder=ema, decoder=ema),
        module_steps=dict(encoder=steps, decoder=steps),
    )  # fmt: skip
    # Official in-training FID: 1024 samples against 1024 train images; the saved sample set: `saved_num`.
    config.evals = generation_evals(config, every=10_000, per_class=256, recon_num=256, recon_repeats=20, fid_num=1024,
                                    fid_reference_num=1024, saved_num=saved_num)  # fmt: skip
    # Params, EMA and Adam stored sharded (the official trainer replicates them: the same numerics,
    # tests/multidevice/test_train_sharded.py). Replicated, the step needs 39.16 GiB per device on the paper's 32
    # devices by the CPU compiler's estimate, at the A100-40GB's limit; FSDP 35.93 GiB (15.09 -> 11.87 GiB on 32
    # v5p chips; docs/scaling.md, "Rehearsal"). --config.mesh.fsdp=False replicates; a checkpoint converts either way.
    config.mesh.fsdp = True
    return config


# ------------------------------------------------------------------ small networks for CPU runs on digits

DIGITS_TRUNK = dict(nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0,
                    resblock_type="biggan", skip_rescale=True)  # fmt: skip


def digits_data(config, *, num_views=1, augmentation="none"):
    """scikit-learn's 8×8 digits, resized to 16×16: a fixed stratified split (1437 train, 360 test)."""
    config.data.source = "digits"
    config.data.name = "digits"
    config.data.image_size = 16
    config.data.num_channels = 1
    config.data.num_views = num_views
    config.data.augmentation = augmentation
    config.num_classes = 10


def schedule(config, *, steps, log=100, evals=None, checkpoint=None):
    config.num_train_steps = steps
    config.log_every_steps = log
    config.eval_every_steps = evals or steps
    config.checkpoint_every_steps = checkpoint or steps


def official_training(config, *, batch_size, lr, ema, module_steps, eval_batch_size, checkpoint_every):
    """The official trainer settings: Adam per module, LinearLR warm-up over 5000 steps, clip 1, EMA per module."""
    config.batch_size = batch_size
    config.num_train_steps = max(module_steps.values())
    config.module_steps.update(module_steps)
    config.optim.lr.update(lr)
    config.optim.warmup_steps = 5000
    config.optim.grad_clip = 1.0
    config.ema.update(ema)
    config.eval_batch_size = eval_batch_size
    config.checkpoint_every_steps = checkpoint_every
    config.log_every_steps = 100


def generation_evals(config, *, every, per_class, recon_num, recon_repeats, fid_num, fid_reference_num=None,
                     saved_num=None, classes=False):
    """The official case-study-1/3 metrics: samples and FID on both evaluation samplers (rk45, euler10), every
    metric on the EMA and the raw weights (official `apply_on_ema`; raw-weight names end in `_raw`).

    `fid` is the official in-training FID: `fid_num` samples against `fid_reference_num` train images, the first
    of the official sampler's seed-0 permutation (None: the whole train split). With a reference subset, `fid50k`
    is the standard 50 000-sample FID against the whole train split, and `fid_saved` scores `saved_num` samples
    (the size of the official saved sample set) against it. FID needs local Inception weights: enable it with
    `--config.evals.fid.every_steps=N` and
    `--config.evals.fid.inception_weights=/path/to/pt_inception-2015-12-05-6726825d.pth`.
    """
    config.eval_every_steps = every  # the entries below leave every_steps to it, but FID (off until given weights)
    both = ("ema", "raw")
    fid = dict(every_steps=-1, inception_weights="", samplers=("rk45", "euler"), pipelines=("clean", "rf"),
               num_samples=fid_num, num_reference_samples=fid_reference_num or 0, reference_shuffle_seed=0, weights=both)  # fmt: skip
    evals = {
        "samples": dict(samplers=("rk45", "euler"), per_class=per_class, num=per_class, weights=both),
        "reconstruction": dict(sampler="rk45", num=recon_num, repeats=recon_repeats, weights=both),
        "fid": fid,
    }  # fmt: skip
    if fid_reference_num:
        evals["fid50k"] = dict(fid, kind="fid", metric="fid50k", num_samples=50_000, num_reference_samples=0, weights=("ema",))
    if saved_num:
        evals["fid_saved"] = dict(fid, kind="fid", metric="fid_saved", num_samples=saved_num, num_reference_samples=0,
                                  weights=("ema",))  # fmt: skip
    if classes:
        # The official ClassAccuracy: test and train split, each read in its seed-0 torch.randperm order.
        evals["class_accuracy"] = dict(splits=("test", "train"), shuffle_seed=0, weights=both)
        # The official TunableStdClassAccuracy: both splits at each prior std.
        evals["class_accuracy_std"] = dict(kind="class_accuracy", splits=("test", "train"),
                                           stds=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2), shuffle_seed=0, weights=both,
                                           metric="tunable_accuracy")  # fmt: skip
    return ml_collections.ConfigDict(evals)


def variant(config, arg, *, image_size=None):
    """`config` as `--config=configs/<name>.py[:arg]` asks for it: the paper's settings (no arg) or `runlocal`
    (at `image_size`, if given). Any other arg is refused: a typo (`:runlokal`) would otherwise start the full
    paper run."""
    if arg not in (None, "", "runlocal"):
        raise ValueError(f"Unknown config argument {arg!r}: use configs/<name>.py (the paper's settings) or "
                         "configs/<name>.py:runlocal (a tiny version).")  # fmt: skip
    if arg == "runlocal":
        config = runlocal(config, image_size=image_size)
    declare_evaluator_settings(config.evals)
    return config


def declare_evaluator_settings(evals):
    """Every setting of each `config.evals` entry's evaluator (`evaluators.spec_keys`) declared in its section, at
    the evaluator's default where the entry leaves it out: only a declared key can be set from the command line,
    and an entry once named only what it changed, so `--config.evals.samples.seed=3` or
    `--config.evals.fid.batch_size=500` was refused as an unknown key. A default of None becomes a typed
    placeholder (None until set). An unknown `kind` is left for `configlib.check` to name."""
    for name, spec in evals.items():
        kind = spec.get("kind", name)
        if kind not in evaluators.kinds():
            continue
        if "every_steps" not in spec:  # None: config.eval_every_steps (evaluators.every_steps)
            spec.every_steps = config_dict.placeholder(int)
        hints = evaluators.spec_hints(kind)
        for key, default in evaluators.spec_keys(kind).items():
            if key in spec or key == "**" or default is inspect.Parameter.empty:
                continue
            spec[key] = default if default is not None else config_dict.placeholder(_flag_type(hints[key]))


def runlocal(config, *, image_size=None):
    """big_vision's `runlocal`: the same composition, tiny — a few steps of small networks, for a laptop check.

    Use it as `--config=configs/<name>.py:runlocal`.
    """
    config.batch_size = 8
    schedule(config, steps=3, log=1, evals=3, checkpoint=3)
    config.eval_batch_size = 8
    config.optim.warmup_steps = 2
    config.module_steps.update({m: -1 for m in config.module_steps})
    if image_size:
        config.data.image_size = image_size
    for section in ("encoder", "decoder"):  # each network's own tiny preset (its class's TINY)
        if config[section].get("name"):
            config[section].update(models.model_class(config[section].name).TINY)
    for spec in config.evals.values():
        spec.every_steps = -1
    config.zoning.num_steps = min(config.zoning.num_steps, 4)
    config.zoning.label_num_steps = min(config.zoning.label_num_steps, 4)
    return config
