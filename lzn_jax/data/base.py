"""What a data source provides to the pipeline, and the epoch ordering shared by random-access sources."""

import abc

import numpy as np
import tensorflow as tf


class Source(abc.ABC):
    """A dataset seen through the logical splits "train" and "test".

    Records are whatever the source stores (file paths, encoded bytes, small arrays); `decode` turns one into an
    image. Ordering and host sharding live here, so that skipping records to resume never decodes them.
    """

    num_classes: int  # distinct labels in the dataset; 1 when it has none

    def classes_note(self) -> str:
        """What the classes are, where a user may not expect it (appended to class-count errors); "" if obvious."""
        return ""

    @abc.abstractmethod
    def num_examples(self, split: str) -> int:
        """Examples in the whole split, over all hosts."""

    @abc.abstractmethod
    def train_records(
        self, *, seed: int, epoch: int, first_step: int, steps: int, local_batch: int, process_index: int,
        process_count: int,
    ) -> tf.data.Dataset:
        """This host's records for steps [first_step, steps) of `epoch`, `local_batch` per step, in order.

        A pure function of its arguments; hosts get disjoint records.
        """

    @abc.abstractmethod
    def eval_records(self, split: str, *, process_index: int, process_count: int) -> tf.data.Dataset:
        """This host's `host_range(num_examples(split), ...)` share of `split`, in a fixed order."""

    @abc.abstractmethod
    def decode(self, record: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        """One record (a dict of tensors) -> (image float32 [h, w, c] in [0, 1], label int32 [])."""

    def unreadable(self, split: str, indices: np.ndarray) -> list[str]:
        """"<what> (<why>)" for each example at `indices` [n] of `split` that cannot be decoded; [] where the source
        cannot tell which (the pipeline then reports TensorFlow's own error)."""
        del split, indices
        return []


class IndexedSource(Source):
    """A source with random access by example index: epochs are full permutations, resuming is O(1)."""

    @abc.abstractmethod
    def records(self, split: str, indices: np.ndarray) -> tf.data.Dataset:
        """The records at `indices` [n] of `split`, in that order."""

    def train_indices(self, *, seed, epoch, first_step, local_batch, process_index, process_count) -> np.ndarray:
        """This host's example indices [steps - first_step, local_batch] of `epoch`'s steps from `first_step`."""
        order = epoch_order(
            self.num_examples("train"), seed=seed, epoch=epoch, local_batch=local_batch, process_count=process_count
        )
        return order[first_step:, process_index]

    def train_records(self, *, seed, epoch, first_step, steps, local_batch, process_index, process_count):
        del steps  # epoch_order drops the same remainder the pipeline's step count does
        indices = self.train_indices(seed=seed, epoch=epoch, first_step=first_step, local_batch=local_batch,
                                     process_index=process_index, process_count=process_count)  # fmt: skip
        return self.records("train", indices.reshape(-1))

    def eval_records(self, split, *, process_index, process_count):
        start, stop = host_range(self.num_examples(split), process_index, process_count)
        return self.records(split, np.arange(start, stop))


def epoch_order(num_examples: int, *, seed: int, epoch: int, local_batch: int, process_count: int) -> np.ndarray:
    """Example indices [steps, process_count, local_batch] of one epoch: a permutation seeded by (seed, epoch).

    Global step s takes the next process_count * local_batch indices of the permutation and host i the i-th
    contiguous block of them, so the global batch does not depend on how many hosts share it. The last
    num_examples % global_batch indices of the permutation are dropped (a different remainder each epoch).
    """
    global_batch = local_batch * process_count
    steps = num_examples // global_batch
    permutation = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return permutation[: steps * global_batch].reshape(steps, process_count, local_batch)


def host_range(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[start, stop) of host `process_index`'s contiguous share; the first num_examples % count hosts get one more.

    The same division as `tfds.even_splits(..., drop_remainder=False)`.
    """
    base, extra = divmod(num_examples, process_count)
    start = process_index * base + min(process_index, extra)
    return start, start + base + (process_index < extra)


def epoch_seeds(seed: int, epoch: int, count: int) -> list[int]:
    """`count` well-mixed non-negative int seeds derived from (seed, epoch), for tf.data's seeded ops."""
    return [int(s) for s in np.random.SeedSequence([seed, epoch]).generate_state(count)]
