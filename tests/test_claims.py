"""experiments/claims.py --quick: every claim's code path end to end (runlocal networks, 2 steps, 2 seeds)."""

import json
import math
import pathlib
import sys

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_claims_quick(tmp_path):
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import claims
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    out = tmp_path / "docs" / "results"
    cache = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    claims.main(["--quick", f"--workdir={tmp_path / 'work'}", f"--out={out}"])
    # claims.main used to set its own cache settings unconditionally: in the suite's worker it raised the
    # minimum compile time worth caching from 0 to 1 s for every test that ran after it there. (With the suite's
    # cache switched off, JAX_COMPILATION_CACHE_DIR="", the script sets up its own, as it does for users.)
    if cache[0]:
        assert (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs) == cache

    record = json.loads((out / "claims.json").read_text(encoding="utf-8"))
    assert {"commit", "command", "claims"} <= set(record)
    assert "--quick" in record["command"]
    assert set(record["claims"]) == {"generation", "representation", "joint"}
    for name, claim in record["claims"].items():
        assert {"metric", "higher_is_better", "arms", "verdict"} <= set(claim), name
        assert claim["verdict"] in ("holds", "does not hold", "within noise"), name
        assert len(claim["arms"]) >= 2, name
        for arm, values in claim["arms"].items():
            assert len(values) == len(claims.QUICK.seeds), (name, arm)
            assert all(math.isfinite(v) for v in values), (name, arm, values)
            if name == "generation":
                assert all(v >= 0 for v in values), (arm, values)  # a Fréchet distance
            else:
                assert all(0.0 <= v <= 1.0 for v in values), (name, arm, values)  # an accuracy
    assert set(record["claims"]["representation"]["arms"]) == {"lzn", "simclr", "untrained"}
    sweep = record["claims"]["representation"]["batch_sweep"]
    assert set(sweep) == {"lzn", "simclr"} and all(len(per) == len(claims.QUICK.batch_sizes) for per in sweep.values())
    for values in record["claims"]["generation"]["details"]["recon_l2"]["10"].values():
        assert all(math.isfinite(v) and v >= 0 for v in values)

    page = (tmp_path / "docs" / "results.md").read_text(encoding="utf-8")
    assert record["commit"] in page and "| generation |" in page
    assert (tmp_path / "docs" / "results_claims.png").stat().st_size > 0
