"""conv_ops: every fast convolution form equals lax.conv / nn.Conv in outputs and gradients."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err

from radblur_jax.models import conv_modules, conv_ops, layers
from radblur_jax.models.backends import BACKENDS

DN = ("NHWC", "HWIO", "NHWC")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _reference(x, kernel, strides, padding, groups):
    pads = conv_ops.padding_pairs(padding, x.shape[1:3], kernel.shape[:2], strides)
    return jax.lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=DN,
                                        feature_group_count=groups)


def _value_and_grads(fn, x, kernel, cotangent):
    @jax.jit
    def run(x, kernel, cotangent):
        y, vjp = jax.vjp(fn, x, kernel)
        return (y,) + vjp(cotangent)
    return run(x, kernel, cotangent)


# (batch, H, W, I, O, kernel, strides, padding, groups): non-square, odd sizes included
CASES = {
    "1x1": (2, 10, 14, 32, 24, (1, 1), (1, 1), 0, 1),
    "depthwise3x3": (2, 9, 13, 12, 12, (3, 3), (1, 1), 1, 12),
    "depthwise3x3_multiplier2": (2, 9, 13, 6, 12, (3, 3), (1, 1), 1, 6),
    "depthwise5x5": (2, 11, 7, 10, 10, (5, 5), (1, 1), 2, 10),
    "depthwise3x3_one_sided_pad": (2, 9, 13, 4, 4, (3, 3), (1, 1), ((1, 1), (0, 2)), 4),
    "depthwise3x3_stride2": (2, 11, 14, 8, 8, (3, 3), (2, 2), 1, 8),
    "full3x3": (2, 9, 13, 5, 7, (3, 3), (1, 1), 1, 1),
    "stem3x3_rgb": (2, 16, 24, 3, 16, (3, 3), (1, 1), 1, 1),
    "full3x3_same": (2, 9, 13, 5, 7, (3, 3), (1, 1), "SAME", 1),
    "head3x3_fewer_outputs": (2, 9, 13, 16, 3, (3, 3), (1, 1), 1, 1),
    "full1x3_fewer_outputs": (2, 7, 10, 6, 4, (1, 3), (1, 1), ((0, 0), (1, 1)), 1),
    "full3x3_stride2": (2, 11, 14, 6, 10, (3, 3), (2, 2), 1, 1),
    "down2x2_stride2": (2, 12, 20, 8, 16, (2, 2), (2, 2), "VALID", 1),
    "patch14": (2, 28, 42, 3, 16, (14, 14), (14, 14), 0, 1),
    "patch14_ragged": (1, 30, 43, 3, 16, (14, 14), (14, 14), 0, 1),
    "full1x3": (2, 7, 10, 4, 6, (1, 3), (1, 1), ((0, 0), (1, 1)), 1),
    "grouped_fallback": (2, 7, 10, 8, 8, (3, 3), (1, 1), 1, 2),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_conv2d_matches_lax_forward_and_gradients(name, rng):
    b, h, w, cin, cout, k, s, pad, groups = CASES[name]
    x = jnp.asarray(rng.standard_normal((b, h, w, cin)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal(k + (cin // groups, cout)), jnp.float32)
    ref = _reference(x, kernel, s, pad, groups)
    g = jnp.asarray(rng.standard_normal(ref.shape), jnp.float32)
    fast = _value_and_grads(lambda a, c: conv_ops.conv2d(a, c, s, pad, groups, "fast"),
                            x, kernel, g)
    want = _value_and_grads(lambda a, c: _reference(a, c, s, pad, groups), x, kernel, g)
    for got, exp in zip(fast, want):
        assert got.shape == exp.shape
        assert rel_err(got, exp) <= 1e-5


@pytest.mark.parametrize("cin, cout, lax_conv", [(16, 3, False), (3, 16, True), (16, 16, True)])
def test_fast_full_conv_form_depends_on_the_output_count(cin, cout, lax_conv):
    """Few outputs (the decoder head, 16 -> 3) take `taps_then_shift`, with no XLA convolution in
    the forward or the gradients; other full 3x3 convs stay `lax.conv_general_dilated`."""
    x = jnp.zeros((1, 6, 7, cin), jnp.float32)
    kernel = jnp.zeros((3, 3, cin, cout), jnp.float32)
    fn = lambda a, k: jnp.sum(conv_ops.conv2d(a, k, padding=1, impl="fast") ** 2)
    jaxpr = str(jax.make_jaxpr(jax.grad(fn, argnums=(0, 1)))(x, kernel))
    assert ("conv_general_dilated" in jaxpr) == lax_conv


def test_conv2d_lax_impl_is_the_reference(rng):
    x = jnp.asarray(rng.standard_normal((1, 6, 9, 4)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 4, 5)), jnp.float32)
    np.testing.assert_array_equal(conv_ops.conv2d(x, kernel, padding=1, impl="lax"),
                                  _reference(x, kernel, (1, 1), 1, 1))


def test_resolve_backend():
    from radblur_jax.models.backends import FAST, LAX, resolve_backend
    assert resolve_backend("auto") is (FAST if jax.default_backend() == "cpu" else LAX)
    assert resolve_backend("lax") is LAX and resolve_backend("fast") is FAST
    assert (FAST.conv.keywords, FAST.norm.keywords) == ({"impl": "fast"}, {"impl": "fast"})
    assert LAX.conv_transpose.keywords == {"impl": "lax"}
    with pytest.raises(ValueError, match="conv_impl='cudnn'"):
        resolve_backend("cudnn")
    with pytest.raises(ValueError, match="unknown conv impl 'auto'"):
        conv_ops.conv2d(jnp.zeros((1, 3, 3, 1)), jnp.zeros((1, 1, 1, 1)), impl="auto")


@pytest.mark.parametrize("kw", [
    dict(features=7, kernel_size=(1, 1)),
    dict(features=12, kernel_size=(3, 3), padding=((1, 1), (1, 1)), feature_group_count=12),
    dict(features=7, kernel_size=(3, 3), padding=((1, 1), (1, 1))),
    dict(features=16, kernel_size=(2, 2), strides=(2, 2), padding="VALID", use_bias=False),
])
def test_conv_module_is_a_drop_in_for_nn_conv(kw, rng):
    x = jnp.asarray(rng.standard_normal((2, 10, 14, 12)), jnp.float32)
    ref_mod, fast_mod = nn.Conv(**kw), conv_modules.Conv(**kw, impl="fast")
    params = ref_mod.init(jax.random.key(1), x)
    assert (jax.tree_util.tree_map(jnp.shape, fast_mod.init(jax.random.key(1), x))
            == jax.tree_util.tree_map(jnp.shape, params))
    params = jax.tree_util.tree_map(
        lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)

    def outputs_and_grads(mod):
        # Not the scalar loss itself: a sum of sines can nearly cancel, and its relative
        # error then says nothing about the convolution.
        loss = lambda p, a: jnp.sum(jnp.sin(mod.apply(p, a)))
        return jax.jit(lambda p, a: (mod.apply(p, a), jax.grad(loss, (0, 1))(p, a)))(params, x)

    for ref, got in zip(outputs_and_grads(ref_mod), outputs_and_grads(fast_mod)):
        for r, g in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got)):
            assert rel_err(g, r) <= 1e-5


@pytest.mark.parametrize("impl", ["fast", "lax"])
@pytest.mark.parametrize("kind", ["pointwise", "depthwise"])
def test_conv_channel_pieces_and_gate_equal_the_concatenation(kind, impl, rng):
    """A tuple input means its concatenation on channels, and `gate=True` the product of the
    output's two channel halves (SimpleGate): same values and gradients as nn.Conv on the
    concatenation, then split and multiplied; for pieces and for one whole input."""
    pieces = [jnp.asarray(rng.standard_normal((2, 7, 11, c)), jnp.float32) for c in (6, 6)]
    whole = jnp.concatenate(pieces, -1)
    kw = (dict(features=8, kernel_size=(1, 1)) if kind == "pointwise" else
          dict(features=12, kernel_size=(3, 3), padding=((1, 1), (1, 1)),
               feature_group_count=12))
    params = nn.Conv(**kw).init(jax.random.key(0), whole)
    params = jax.tree_util.tree_map(
        lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)
    plain, gated = conv_modules.Conv(**kw, impl=impl), conv_modules.Conv(**kw, gate=True, impl=impl)
    weights = jnp.asarray(rng.standard_normal((2, 7, 11, kw["features"])), jnp.float32)
    half = kw["features"] // 2

    def loss(outs):
        full, gate_pieces, gate_whole = outs
        return (jnp.sum(full * weights) + jnp.sum(gate_pieces * weights[..., :half])
                + jnp.sum(gate_whole * weights[..., half:])), outs

    def loss_module(p, a, b):
        return loss((plain.apply(p, (a, b)), gated.apply(p, (a, b)),
                     gated.apply(p, jnp.concatenate([a, b], -1))))

    def loss_reference(p, a, b):
        y = nn.Conv(**kw).apply(p, jnp.concatenate([a, b], -1))
        return loss((y, y[..., :half] * y[..., half:], y[..., :half] * y[..., half:]))

    got, want = (jax.jit(jax.grad(f, (0, 1, 2), has_aux=True))(params, *pieces)
                 for f in (loss_module, loss_reference))
    assert [o.shape[-1] for o in got[1]] == [kw["features"], half, half]
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert rel_err(a, b) <= 1e-5
    if kind == "pointwise":
        with pytest.raises(ValueError, match="gate=True needs an even number of outputs"):
            conv_modules.Conv(7, (1, 1), gate=True, impl=impl).init(jax.random.key(0), whole)


def test_conv_module_bfloat16_compute(rng):
    x = jnp.asarray(rng.standard_normal((1, 8, 12, 6)), jnp.float32)
    kw = dict(features=5, kernel_size=(3, 3), padding=1, dtype=jnp.bfloat16)
    params = nn.Conv(**kw).init(jax.random.key(0), x)
    ref = jax.jit(nn.Conv(**kw).apply)(params, x)
    got = jax.jit(conv_modules.Conv(**kw, impl="fast").apply)(params, x)
    assert got.dtype == ref.dtype == jnp.bfloat16
    assert rel_err(got.astype(jnp.float32), ref.astype(jnp.float32)) <= 1e-2


@pytest.mark.parametrize("k", [2, 4])
def test_conv_transpose_matches_layers(k, rng):
    x = jnp.asarray(rng.standard_normal((2, 5, 7, 6)), jnp.float32)
    ref_mod = layers.ConvTranspose(9, k, k)
    params = ref_mod.init(jax.random.key(0), x)
    params = jax.tree_util.tree_map(
        lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)
    fast_mod = conv_modules.ConvTranspose(9, k, k, impl="fast")
    g = jnp.asarray(rng.standard_normal((2, 5 * k, 7 * k, 9)), jnp.float32)

    @jax.jit
    def outputs_and_grads(p, a, g):
        y_ref, vjp_ref = jax.vjp(lambda p, a: ref_mod.apply(p, a), p, a)
        y_fast, vjp_fast = jax.vjp(lambda p, a: fast_mod.apply(p, a), p, a)
        y_lax = conv_modules.ConvTranspose(9, k, k, impl="lax").apply(p, a)
        return y_ref, y_fast, y_lax, vjp_ref(g), vjp_fast(g)

    y_ref, y_fast, y_lax, g_ref, g_fast = outputs_and_grads(params, x, g)
    assert rel_err(y_fast, y_ref) <= 1e-5
    assert rel_err(y_lax, y_ref) <= 1e-6
    for r, o in zip(jax.tree_util.tree_leaves(g_ref), jax.tree_util.tree_leaves(g_fast)):
        assert rel_err(o, r) <= 1e-5


def test_conv_transpose_rejects_overlapping_kernels(rng):
    x = jnp.zeros((1, 4, 4, 3))
    with pytest.raises(ValueError, match="kernel == stride"):
        conv_modules.ConvTranspose(4, 3, 2).init(jax.random.key(0), x)


@pytest.mark.parametrize("shape", [(8, 16, 12, 5), (3, 7, 9, 4), (1, 1, 1, 3), (4, 300, 6),
                                   (512, 3)])
@pytest.mark.parametrize("impl", ["fast", "lax"])
def test_backend_sum_rows_equals_sum_over_leading_axes(shape, impl, rng):
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    got = jax.jit(BACKENDS[impl].sum_rows)(x)
    assert got.shape == (shape[-1],)
    want = np.asarray(x, np.float64).sum(axis=tuple(range(len(shape) - 1)))
    assert rel_err(got, want) <= 1e-6


def test_lax_sum_rows_is_one_reduction():
    """The accelerator backend sums with one reduction, not the CPU's halving folds: a GPU
    compiler fuses the folds into one kernel whose code doubles with every fold."""
    x = jnp.zeros((16, 64, 64, 32))
    fast = str(jax.make_jaxpr(BACKENDS["fast"].sum_rows)(x))
    lax_ = str(jax.make_jaxpr(BACKENDS["lax"].sum_rows)(x))
    # The folds the CPU form makes: each image's 4096 rows halved down to 64, two slices per
    # fold; never across images (a sharded batch: tests/sharding_check.py).
    assert fast.count("slice") == 12
    assert lax_.count("reduce_sum") == 1 and "slice" not in lax_ and " add " not in lax_


# The whole `tiny` network with the fast forms against `lax`: test_lean_step.py.
