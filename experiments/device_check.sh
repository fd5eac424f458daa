#!/usr/bin/env bash
# The device check of issue 12: the zoning kernel and every paper model's train step on one accelerator.
#
#   bash experiments/device_check.sh          # on a GPU/TPU machine: paper shapes (a few minutes)
#   bash experiments/device_check.sh --tiny   # on a CPU: tiny shapes, the same code path
#
# Needs only what a bare accelerator machine has (JAX for its backend, flax, optax, orbax, chex, diffrax):
# ml-collections and clu come as wheels in .whl/ and are installed into /tmp/site (no index, no dependencies).
# TensorFlow is not needed: nothing on this path imports it. Extra arguments go to experiments/device_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ " $* " == *" --tiny "* ]]; then
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
fi
"$PYTHON" -c "import sys; sys.modules['tensorflow'] = None; sys.argv = ['experiments/device_check.py'] + sys.argv[1:]; \
import runpy; runpy.run_path('experiments/device_check.py', run_name='__main__')" "$@"
