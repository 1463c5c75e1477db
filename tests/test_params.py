"""models/params.py: `param` initialises as `nn.Module.param` and checks shapes on apply."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radblur_jax.models.conv_modules import Conv
from radblur_jax.models.params import param


class _Dense(nn.Module):
    """`x @ w` with `w` made by our `param` (flax_param=False) or flax's `self.param`."""
    flax_param: bool = False

    @nn.compact
    def __call__(self, x):
        make = self.param if self.flax_param else lambda *a: param(self, *a)
        return x @ make("w", nn.initializers.lecun_normal(), (x.shape[-1], 5), jnp.float32)


def test_param_initialises_like_module_param_and_returns_the_stored_value():
    x = jnp.ones((2, 3))
    ours = _Dense().init(jax.random.key(0), x)["params"]["w"]
    flax_own = _Dense(flax_param=True).init(jax.random.key(0), x)["params"]["w"]
    np.testing.assert_array_equal(ours, flax_own)
    stored = jnp.arange(15.0).reshape(3, 5)
    np.testing.assert_array_equal(_Dense().apply({"params": {"w": stored}}, x), x @ stored)


def test_param_shape_mismatch_names_the_path_and_both_shapes():
    x = jnp.ones((1, 8, 8, 4))
    params = Conv(6, (3, 3)).init(jax.random.key(0), x)["params"]
    wrong = dict(params, kernel=jnp.zeros((3, 3, 4, 7)))
    with pytest.raises(ValueError, match=r"kernel: shape \(3, 3, 4, 7\).*expected \(3, 3, 4, 6\)"):
        Conv(6, (3, 3)).apply({"params": wrong}, x)
