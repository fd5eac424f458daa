"""`train.StopSignals`: what the loop sees when SIGTERM or Ctrl-C arrives (the end-to-end runs are in
tests/test_reliability.py: stop, checkpoint, resume, bit-identical end)."""

import os
import signal

import pytest

from lzn_jax import train


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_becomes_a_stop_request_after_the_current_step_and_the_handlers_are_restored(number):
    """A KeyboardInterrupt raised inside a compile was swallowed ("Exception ignored in _xla_gc_callback") and
    training ran on; SIGTERM killed the run without a checkpoint. Both now only set a flag the loop reads."""
    before = signal.getsignal(number)
    with train.StopSignals() as stop:
        assert not stop.reached(manager=None, step=3)
        os.kill(os.getpid(), number)  # delivered to this (main) thread: the handler runs before the next line
        assert stop.reached(manager=None, step=3)
        message = stop.message(3, "/runs/a/checkpoints")
    assert signal.getsignal(number) is before
    name = signal.Signals(number).name
    assert message == (f"Stopped by {name} after step 3, saved to /runs/a/checkpoints; run the same command again "
                       "to resume from step 3.")  # fmt: skip
    assert train.Interrupted(message, number).exit_code == 128 + number
