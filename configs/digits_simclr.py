r"""SimCLR on scikit-learn's digits: the contrastive baseline of configs/digits_repr.py, on a CPU.

The same encoder, augmented views, batch size, steps, optimizer and linear probe; only the loss differs
(NT-Xent, temperature 0.5) — the paper's LZN-versus-SimCLR comparison in one codebase.

    python -m lzn_jax.main --config=configs/digits_simclr.py --workdir=workdirs/digits_simclr
"""

from configs import digits_repr


def get_config(arg=None):
    config = digits_repr.get_config(arg)
    config.task = "simclr"
    config.loss.temperature = 0.5
    return config
