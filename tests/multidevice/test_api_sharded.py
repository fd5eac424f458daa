"""`api.load(workdir, mesh=...)` of a run trained on 8 devices: every method on images sharded over the mesh.

The train mesh has explicit axes; params restored with its NamedShardings failed every eager vmap and grad
("Passing lowering_platforms ... is required when only AbstractMesh exists"). Run via tests/test_multidevice.py.
"""

import jax
import numpy as np
import pytest
from api_checks import check_every_method, train_short_run
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from support import tiny_joint_config

from lzn_jax import api, data, parallel

pytestmark = pytest.mark.slow


def test_params_loaded_onto_the_train_mesh_work_in_every_transform_on_sharded_images(tmp_path):
    config = tiny_joint_config()
    assert jax.device_count() == 8 and config.batch_size % 8 == 0
    train_short_run(config, tmp_path)
    mesh = parallel.make_mesh(-1, 1)  # the mesh training used: (data 8, model 1), explicit axes
    lzn, params = api.load(str(tmp_path), mesh=mesh)
    sharding = jax.tree.leaves(params)[0].sharding
    assert sharding.is_fully_replicated and len(sharding.device_set) == 8
    images, _ = data.load_arrays(lzn.config.data, "test")
    rows = NamedSharding(sharding.mesh, P(parallel.DATA))
    check_every_method(lzn, params, jax.device_put(np.asarray(images[:8]), rows))
