"""The evaluators' per-device functions on 8 devices (run by tests/test_multidevice.py)."""

from test_samplers import noise, test_rk45_runs_inside_the_evaluators_shard_map  # noqa: F401  (re-collected here)
