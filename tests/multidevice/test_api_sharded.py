"""`api.load(workdir, mesh=...)` of a run trained on 8 devices: the API on images sharded over the mesh.

The train mesh has explicit axes; params restored with its NamedShardings failed every eager vmap and grad
("Passing lowering_platforms ... is required when only AbstractMesh exists"). Run via tests/test_multidevice.py.

tests/test_api_transforms.py checks every method on one device. Here, in every transform, the three methods
that between them take each sharded road: `latents` (the encoder and the forward zoning flow, gradients to
params and images), `classify` (the label anchors' reverse flow) and `reconstruct` (the decoder's inversion and
sampling). `embed` is the first half of `latents`; `generate` and `interpolate` are `reconstruct`'s sampler on
other inputs. The other three cost 176 s more on one core (measured in stop 17, 292 s for all six).
"""

import jax
import numpy as np
import pytest
from api_checks import check_every_method, train_short_run
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from support import EIGHT_DEVICE_JOINT, EIGHT_DEVICE_STEP, tiny_joint_config

from lzn_jax import api, configlib, data, parallel

pytestmark = pytest.mark.slow
SHARDED_ROADS = ("latents", "classify", "reconstruct")


def test_params_loaded_onto_the_train_mesh_work_in_every_transform_on_sharded_images(tmp_path):
    # test_fsdp_main's replicated joint run, trained in process: its 8-device train step is a cache load when that
    # file ran first (tests/test_multidevice.py runs this file last for that).
    config = configlib.override(tiny_joint_config(), **EIGHT_DEVICE_STEP, **EIGHT_DEVICE_JOINT)
    assert jax.device_count() == 8 and config.batch_size % 8 == 0
    train_short_run(config, tmp_path)
    mesh = parallel.make_mesh(-1, 1)  # the mesh training used: (data 8, model 1), explicit axes
    lzn, params = api.load(str(tmp_path), mesh=mesh)
    sharding = jax.tree.leaves(params)[0].sharding
    assert sharding.is_fully_replicated and len(sharding.device_set) == 8
    images, _ = data.load_arrays(lzn.config.data, "test")
    rows = NamedSharding(sharding.mesh, P(parallel.DATA))
    check_every_method(lzn, params, jax.device_put(np.asarray(images[:8]), rows), SHARDED_ROADS)
    # Images laid out over the mesh the user passed (Explicit axes, as jax.make_mesh makes by default) work too.
    # The bug: every method failed with "Mesh for all inputs should be equal", since `load` puts the params on an
    # Auto-axes copy of the mesh, and the images above were placed on that copy.
    own = jax.device_put(np.asarray(images[:8]), NamedSharding(mesh, P(parallel.DATA)))
    key = jax.random.key(0)
    expected = lzn.classify(params, jax.device_put(np.asarray(images[:8]), rows), key=key)
    np.testing.assert_array_equal(lzn.classify(params, own, key=key), expected)
