"""Files that may live on local disk or gs://: one place that reaches for tf.io.gfile, and only on first use.

Importing this module imports neither TensorFlow nor CLU's metric writers (which import TensorFlow at module
level), so the evaluators and the train step can be built on a machine without TensorFlow
(experiments/device_check.sh); TensorFlow is needed only when a file is actually read or written.
"""

from __future__ import annotations

import json


def gfile():
    """tf.io.gfile: local paths and gs:// alike (imported on first use: TensorFlow is slow to import)."""
    import tensorflow as tf

    return tf.io.gfile


def write_text(path: str, text: str) -> None:
    """Writes a text file, local or gs://."""
    with gfile().GFile(path, "w") as f:
        f.write(text)


def read_jsonl(path: str) -> list[dict]:
    """The records of a metrics.jsonl file, in order."""
    with gfile().GFile(path) as f:
        return [json.loads(line) for line in f if line.strip()]
