"""`deferred_remat`: the gradients of plain autodiff, the params of the plain module, and
activations that are not kept until the cotangent arrives (XLA:CPU's memory analysis)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import grad_temp_bytes, rel_err

from radblur_jax.models import decoder
from radblur_jax.models.blocks import NAFBlock
from radblur_jax.models.configs import encoder_config
from radblur_jax.models.decoder import BlurStem
from radblur_jax.models.remat import deferred_remat
from radblur_jax.models.vit import DinoViT


class Wide(nn.Module):
    """Activations of (rows, 1024) floats from a (rows, C) input; `features` outputs."""
    features: int = 16

    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(1024, name="up")(x))
        return nn.Dense(self.features, name="down")(jnp.sin(h) * h)


class Net(nn.Module):
    mode: str  # "plain" | "deferred"
    widths: tuple = (16, 16)  # the blocks' outputs; an input of another shape than the
    # output takes the cotangent's sum as its dependence, the same shape elementwise

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate(self.widths):
            block = Wide(width, name=f"block{i}")
            x = deferred_remat(block, x) if self.mode == "deferred" else block(x)
        # A later part whose backward keeps its own (rows, 1024) activations: where the
        # earlier blocks' activations would add to the peak if they were kept.
        h = x
        for i in range(3):
            h = jnp.tanh(nn.Dense(1024, name=f"late{i}_up")(h))
            h = nn.Dense(16, name=f"late{i}_down")(h * h)
        return jnp.sum(jnp.sin(h))


WIDTHS = [(16, 16), (12, 16)]


def _setup(widths: tuple, rows: int = 2048):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(rows, 16)), jnp.float32)
    return x, Net("plain", widths).init(jax.random.key(0), x)


@pytest.mark.parametrize("widths", WIDTHS)
def test_same_params_and_gradients(widths):
    x, params = _setup(widths, 64)
    deferred = Net("deferred", widths).init(jax.random.key(0), x)
    assert jax.tree.structure(deferred) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(deferred), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    grads = {m: jax.jit(jax.grad(lambda p, x, m=m: Net(m, widths).apply(p, x),
                                 argnums=(0, 1)))(params, x) for m in ("plain", "deferred")}
    for a, b in zip(jax.tree.leaves(grads["deferred"]), jax.tree.leaves(grads["plain"])):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("widths", WIDTHS)
def test_recomputed_activations_are_not_live_at_the_peak(widths):
    x, params = _setup(widths)
    activation = x.shape[0] * 1024 * 4

    plain, deferred = (grad_temp_bytes(Net(mode, widths), params, x)
                       for mode in ("plain", "deferred"))
    # Each of the two early blocks keeps >= 2 activations for its backward in the plain form.
    assert deferred <= plain - 2 * activation, (plain, deferred, activation)


class NAFChain(nn.Module):
    """`early` NAF blocks under `deferred_remat`, then three plain ones whose backward keeps
    its own activations (the peak)."""
    early: int

    @nn.compact
    def __call__(self, x):
        for i in range(self.early):
            x = deferred_remat(NAFBlock(name=f"early{i}"), x)
        for i in range(3):
            x = NAFBlock(name=f"late{i}")(x)
        return jnp.sum(jnp.sin(x))


def test_a_rematerialised_block_keeps_only_its_input():
    """Each block under `deferred_remat` adds its input to the peak and nothing else: not
    the activation-sized broadcasts of its biases and LayerNorm scales that XLA:CPU
    materialises for its fused kernels (shared by the forward and the recomputation, they
    stayed live from one to the other: 4 activations per block in all, not 1)."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 16)), jnp.float32)
    activation = x.size * 4

    def temp_bytes(early: int) -> int:
        chain = NAFChain(early)
        return grad_temp_bytes(chain, chain.init(jax.random.key(0), x), x)

    added = (temp_bytes(4) - temp_bytes(2)) / 2
    assert added <= 1.25 * activation, (added / activation)


def test_stem_remat_keeps_the_params_and_the_function(monkeypatch):
    """Each NAF block of the stem goes through `deferred_remat` (whose gradients through
    nested modules the ViT's test below checks), same params, same output."""
    image = jax.random.uniform(jax.random.key(1), (2, 32, 48, 3))
    params = jax.jit(BlurStem(width=4).init)(jax.random.key(0), image)
    stem = BlurStem(width=4, remat=True)
    assert jax.tree.structure(jax.eval_shape(stem.init, jax.random.key(0), image)) == \
        jax.tree.structure(params)
    calls = []

    def counted(module, *args):
        calls.append(module.name)
        return deferred_remat(module, *args)

    monkeypatch.setattr(decoder, "deferred_remat", counted)
    got = jax.jit(stem.apply)(params, image)
    assert calls == [f"scale{s}_block0" for s in range(5)]
    want = jax.jit(BlurStem(width=4).apply)(params, image)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)


def test_vit_remat_keeps_the_params_and_gradients():
    cfg = encoder_config("tiny")
    x = jax.random.uniform(jax.random.key(2), (2, 42, 56, 3))
    params = DinoViT(cfg).init(jax.random.key(0), x)
    cfg_remat = cfg.copy_and_resolve_references()
    cfg_remat.remat = True
    assert jax.tree.structure(DinoViT(cfg_remat).init(jax.random.key(0), x)) == \
        jax.tree.structure(params)

    def loss(p, x, c):
        out = DinoViT(c).apply(p, x)
        return sum(jnp.sum(jnp.sin(t)) for t in out.taps) + jnp.sum(out.last_hidden ** 2)

    got = jax.jit(jax.grad(lambda p, x: loss(p, x, cfg_remat), argnums=(0, 1)))(params, x)
    want = jax.jit(jax.grad(lambda p, x: loss(p, x, cfg), argnums=(0, 1)))(params, x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert rel_err(a, b) <= 1e-5
