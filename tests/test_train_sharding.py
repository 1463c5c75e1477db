"""Partition rules and the mesh (radblur_jax.train.sharding)."""
from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from train_helpers import load_config

from radblur_jax.train import sharding

RULES = load_config("deblur.py", "tiny").sharding.rules


@pytest.mark.parametrize("path,shape,want", [
    ("params/depth/pretrained/blocks_0/mlp/fc1/kernel", (64, 256), P(None, "fsdp")),
    ("opt_state/0/mu/depth/pretrained/blocks_0/mlp/fc1/kernel", (64, 256), P(None, "fsdp")),
    ("params/depth/pretrained/pos_embed", (1, 1370, 384), P()),
    ("params/decoder/alpha", (4, 4096), P()),                    # "alpha" rule: replicated
    ("params/stem/conv/kernel", (3, 3, 3, 16), P()),             # below min_fsdp_size
    ("params/x/kernel", (3, 3, 96, 96), P(None, None, None, "fsdp")),  # last of the largest
    ("params/x/kernel", (4099, 3), P()),                         # no axis divisible by 2
    ("step", (), P()),
])
def test_spec_for_default_rules(path, shape, want):
    assert sharding.spec_for(path, shape, RULES, fsdp=2, min_size=4096) == want


def test_spec_for_explicit_spec_and_errors():
    rules = ((r"head/kernel$", (None, "fsdp")), (".*", "replicated"))
    assert sharding.spec_for("a/head/kernel", (8, 8), rules, 2, 1) == P(None, "fsdp")
    assert sharding.spec_for("a/other", (8, 8), rules, 2, 1) == P()
    with pytest.raises(ValueError, match="more entries"):
        sharding.spec_for("a/head/kernel", (8,), rules, 2, 1)


def test_fsdp_one_replicates_everything():
    assert sharding.spec_for("params/x/kernel", (512, 512), RULES, fsdp=1, min_size=1) == P()


def test_make_mesh_sizes_and_errors():
    cfg = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    mesh = sharding.make_mesh(cfg)
    assert mesh.axis_names == ("data", "fsdp")
    assert mesh.shape["data"] == jax.device_count()
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ValueError, match="config.mesh"):
        sharding.make_mesh(ml_collections.ConfigDict(dict(data=jax.device_count() + 1, fsdp=1)))
    with pytest.raises(ValueError, match="at most one"):
        sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=-1)))


def test_tree_shardings_follow_paths():
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)))
    tree = {"params": {"w": np.zeros((128, 64)), "pos_embed": np.zeros((1, 5, 8))}}
    cfg = load_config("deblur.py", "tiny").sharding
    out = sharding.tree_shardings(tree, mesh, cfg)
    assert out["params"]["w"].spec == P() and out["params"]["pos_embed"].spec == P()
    assert sharding.path_str(jax.tree_util.tree_flatten_with_path(tree)[0][0][0]) in (
        "params/pos_embed", "params/w")


def test_batch_axes_of_a_sharding_and_on_mesh_checks_them():
    """`batch_axes_of` reads the axes a batch sharding splits the leading axis over (what the
    steps pass to `on_mesh`); `on_mesh` refuses axes its mesh lacks. That `batchwise` ops then
    run over those axes is tests/sharding_check.py's check on 8 devices."""
    from jax.sharding import NamedSharding

    from radblur_jax.models.spmd import batch_axes_of, on_mesh
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1}))
    assert batch_axes_of(NamedSharding(mesh, P(("data", "fsdp")))) == ("data", "fsdp")
    assert batch_axes_of(NamedSharding(mesh, P("data", None))) == ("data",)
    assert batch_axes_of(NamedSharding(mesh, P())) == ()
    assert on_mesh(mesh, lambda x: x + 1, ("data",))(1) == 2
    with pytest.raises(ValueError, match=r"batch axes \['model'\] are not axes of the mesh"):
        on_mesh(mesh, lambda x: x, ("model",))
