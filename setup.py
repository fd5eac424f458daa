"""lzn_jax: Latent Zoning Networks (Lin et al., NeurIPS 2025) in JAX/Flax."""

import setuptools

RUNTIME = [
    "jax>=0.7.1",
    "flax>=0.11",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.11",
    "tensorflow-cpu>=2.16",  # tf.data input pipelines under tensorflow-datasets
    "tensorflow-datasets>=4.9.6",
    "tensorboard>=2.16",  # CLU's TensorBoard metric writer
    "ml_collections>=1.0",
    "clu==0.0.12",
    "chex>=0.1.89",
    "diffrax>=0.6",  # adaptive Dopri5 (RK45) sampling on device, as the official RK45 sampler
    "absl-py",
    "numpy>=1.26",
    "scipy>=1.11",  # the tests' independent references (sqrtm for FID, RK45); scikit-learn needs it too
    "etils[epath]>=1.5",  # Orbax's path library: api.load and config.checkpoint.path read local and gs:// alike
    "scikit-learn>=1.3",  # bundled `digits` data: the CPU default that needs no download
    "pillow>=10",  # PNG sample grids and clean-fid style resizing
    "tqdm>=4.60",  # python -m lzn_jax.embed's progress bar
]

# experiments/lzn_demo.ipynb: its figures, and running it headless (the test suite executes it).
NOTEBOOK = ["matplotlib>=3.8", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"]

EXTRAS = {
    "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", *NOTEBOOK],
    "notebook": NOTEBOOK,
    # Reading official PyTorch `.pt` checkpoints in `python -m lzn_jax.convert`.
    "torch": ["torch>=2.2"],
    # The TPU compiler: runs on Cloud TPU VMs, and compiles for a TPU slice on any machine
    # (`experiments/scale_rehearsal.py --topology=v5e:8x16`). Tested: libtpu 0.0.52 with jax 0.10.2.
    "tpu": ["libtpu>=0.0.42"],
}

setuptools.setup(
    name="lzn_jax",
    version="0.1.0",
    description="Latent Zoning Networks in JAX/Flax: one latent space for generation, representation and classification.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # configs/ stays at the top of the checkout and ships inside the package as lzn_jax/shipped/configs, so that
    # `--config=configs/<name>.py` works outside a checkout too (lzn_jax.main falls back to the shipped copy).
    packages=setuptools.find_packages(include=["lzn_jax", "lzn_jax.*"]) + ["lzn_jax.shipped.configs"],
    package_dir={"lzn_jax.shipped.configs": "configs"},
    python_requires=">=3.10",
    install_requires=RUNTIME,
    extras_require=EXTRAS,
    license="MIT",
)
