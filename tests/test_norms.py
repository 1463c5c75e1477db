"""norms.LayerNorm: the fast custom-VJP form equals flax's nn.LayerNorm in outputs and grads."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import grad_temp_bytes, rel_err

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


class _NormChain(nn.Module):
    """`n` `lax` LayerNorms, each followed by a sine."""
    n: int

    @nn.compact
    def __call__(self, x):
        for i in range(self.n):
            x = jnp.sin(norms.LayerNorm(impl="lax", name=f"norm{i}")(x))
        return jnp.sum(x)


def test_lax_backward_does_not_keep_the_forward_broadcast_scale():
    """XLA:CPU materialises the scale broadcast to the activation's shape; the backward must
    not share the forward's buffer, which would stay live from one to the other: 4
    activations kept per LayerNorm of this chain instead of 3."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, 64, 16)), jnp.float32)

    def temp_bytes(n: int) -> int:
        chain = _NormChain(n)
        return grad_temp_bytes(chain, chain.init(jax.random.key(0), x), x)

    per_norm = (temp_bytes(6) - temp_bytes(2)) / 4 / x.nbytes
    assert per_norm <= 3.5, per_norm
