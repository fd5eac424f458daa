"""Metric writers: CLU's TensorBoard + logging writer, and a JSONL file a script can read back.

Only process 0 writes files (local or gs://); other processes log. `metrics.jsonl` gets one JSON object per write:
{"step": int, "<name>": value, ...}.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import numpy as np
from clu import metric_writers
from clu.metric_writers import interface

from lzn_jax.files import gfile


class JsonlWriter(interface.MetricWriter):
    """Appends scalars (and text) to `path` as one JSON line per write; images and others are ignored."""

    def __init__(self, path: str):
        self._path = path
        gfile().makedirs(os.path.dirname(path) or ".")

    def _append(self, step: int, values: Mapping[str, Any]) -> None:
        record = {"step": int(step)}
        record.update({k: _plain(v) for k, v in values.items()})
        with gfile().GFile(self._path, "a") as f:  # on GCS, TensorFlow rewrites the object with the new line
            f.write(json.dumps(record) + "\n")

    def write_scalars(self, step, scalars):
        self._append(step, scalars)

    def write_texts(self, step, texts):
        self._append(step, texts)

    def write_summaries(self, step, values, metadata=None):
        pass

    def write_images(self, step, images):
        pass

    def write_videos(self, step, videos):
        pass

    def write_audios(self, step, audios, *, sample_rate):
        pass

    def write_histograms(self, step, arrays, num_buckets=None):
        pass

    def write_hparams(self, hparams):
        pass

    def flush(self):
        pass

    def close(self):
        pass


def _plain(value):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()


def drop_records_after(workdir: str, step: int) -> int:
    """Removes the records of steps after `step` from `workdir`'s metrics.jsonl (process 0); returns how many.

    A run killed between two checkpoints had logged steps that the resumed run trains and logs again: the file
    held those steps twice, and a plot of it (the demo notebook's) drew them twice. The resumed run resumes the
    file at its checkpoint too. (TensorBoard's event files keep both; TensorBoard's default loader shows the
    later, `--load_fast=false` both: experiments/tensorboard_resume.py.)
    """
    path = os.path.join(workdir, "metrics.jsonl")
    if jax.process_index() != 0 or not gfile().exists(path):
        return 0
    with gfile().GFile(path) as f:
        lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) < len(lines):
        with gfile().GFile(path + ".tmp", "w") as f:
            f.write("".join(kept))
        gfile().rename(path + ".tmp", path, overwrite=True)  # a kill mid-write leaves the old file
    return len(lines) - len(kept)


def create(workdir: str) -> interface.MetricWriter:
    """TensorBoard event files + logging + metrics.jsonl in `workdir` (process 0); logging elsewhere."""
    if jax.process_index() > 0:
        return metric_writers.create_default_writer(workdir, just_logging=True)
    default = metric_writers.create_default_writer(workdir, asynchronous=False)
    return metric_writers.MultiWriter([default, JsonlWriter(os.path.join(workdir, "metrics.jsonl"))])
