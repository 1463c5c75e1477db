"""norms.LayerNorm: the fast custom-VJP form equals flax's nn.LayerNorm in outputs and grads."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err

from radblur_jax.models import norms


def _outputs_and_grads(module, params, x, cotangent):
    @jax.jit
    def run(p, a, g):
        y, vjp = jax.vjp(lambda p, a: module.apply(p, a), p, a)
        return y, vjp(g)
    return run(params, x, cotangent)


@pytest.mark.parametrize("shape,offset", [((2, 9, 13, 16), 0.0), ((3, 5, 7, 64), 0.0),
                                          ((1, 6, 10, 24), 3.0)])
def test_fast_layer_norm_equals_flax(shape, offset):
    rng = np.random.default_rng(0)
    x = jnp.asarray(offset + rng.standard_normal(shape), jnp.float32)
    g = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    ref = nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32)
    params = ref.init(jax.random.key(0), x)
    params = jax.tree.map(lambda p: p + 0.1 * jnp.asarray(rng.standard_normal(p.shape),
                                                          jnp.float32), params)
    want = _outputs_and_grads(ref, params, x, g)
    for impl in ("fast", "lax"):
        mod = norms.LayerNorm(1e-6, impl)
        assert (jax.tree.map(jnp.shape, mod.init(jax.random.key(0), x))
                == jax.tree.map(jnp.shape, params))
        got = _outputs_and_grads(mod, params, x, g)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            assert a.shape == b.shape and a.dtype == b.dtype
            assert rel_err(a, b) <= (1e-5 if impl == "fast" else 1e-6), impl


def test_layer_norm_casts_to_float32_and_checks_impl():
    x = jnp.ones((1, 2, 3, 4), jnp.bfloat16) * jnp.arange(4, dtype=jnp.bfloat16)
    mod = norms.LayerNorm()
    y = mod.apply(mod.init(jax.random.key(0), x), x)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y[0, 0, 0]), (np.arange(4) - 1.5) / np.sqrt(1.25),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="unknown conv impl"):
        norms.layer_norm(x.astype(jnp.float32), jnp.ones(4), jnp.zeros(4), impl="cudnn")
