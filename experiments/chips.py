"""Accelerator specifications the scale rehearsal and the device check judge against (one source).

Dense peak FLOP/s and memory per chip. Sources: NVIDIA A100 datasheet (40 GB HBM2; TF32 156, BF16 312 TFLOP/s
dense), NVIDIA H100 SXM and H200 SXM datasheets (TF32 494.7, BF16 989.4 TFLOP/s dense; 80 GB HBM3 and 141 GB
HBM3e), Google Cloud TPU system-architecture pages (v5e: 197 BF16 TFLOP/s, 16 GiB HBM; v5p: 459, 95 GiB; v4:
275, 32 GiB; v6e: 918, 32 GiB). float32 matmuls run as TF32 on A100/H100/H200 (XLA's and cuDNN's default
precision) and as bf16 passes on TPU (JAX's default precision there), hence the float32 column.
"""

GiB = 2**30

CHIPS = {
    "A100-40GB": dict(hbm=40 * GiB, float32=156e12, bfloat16=312e12),
    "H100/H200": dict(hbm=80 * GiB, float32=494.7e12, bfloat16=989.4e12),
    "TPU v5e": dict(hbm=16 * GiB, float32=197e12, bfloat16=197e12),
}
TPU_HBM = {"v4": 32 * GiB, "v5e": 16 * GiB, "v5litepod": 16 * GiB, "v5p": 95 * GiB, "v6e": 32 * GiB}
# `jax.devices()[0].device_kind` substrings -> CHIPS entry.
DEVICE_KINDS = {"A100": "A100-40GB", "H100": "H100/H200", "H200": "H100/H200", "v5 lite": "TPU v5e", "v5e": "TPU v5e"}


def chip_of(device_kind: str):
    """The CHIPS entry name of a JAX device kind (e.g. "NVIDIA H200"), or None (CPU, unknown chips)."""
    return next((chip for key, chip in DEVICE_KINDS.items() if key.lower() in device_kind.lower()), None)
