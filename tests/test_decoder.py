"""Decoder building blocks: pixel shuffle, alpha clamp, ADA gate, stem/decoder shapes."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from conftest import rel_err
from test_reversible import BACKEND, random_params

from radblur_jax.models.ada import AdaptiveDepthAttention
from radblur_jax.models.backends import FAST, LAX
from radblur_jax.models.blocks import NAFBlock, pixel_shuffle
from radblur_jax.models.decoder import BlurStem, ReversibleDecoder, clamp_alpha, level_channels


def test_pixel_shuffle_matches_torch_layout():
    x = np.arange(2 * 3 * 4 * 8, dtype=np.float32).reshape(2, 3, 4, 8)
    got = np.asarray(pixel_shuffle(jnp.asarray(x)))
    assert got.shape == (2, 6, 8, 2)
    for c in range(2):  # torch: out[c, 2h+i, 2w+j] = in[4c + 2i + j, h, w]
        for i in range(2):
            for j in range(2):
                np.testing.assert_array_equal(got[:, i::2, j::2, c], x[..., 4 * c + 2 * i + j])


def test_clamp_alpha_keeps_magnitude_and_sign():
    got = clamp_alpha(jnp.asarray([0.5, -0.5, 1e-5, -1e-5, 0.0, -2.0]))
    np.testing.assert_allclose(got, [0.5, -0.5, 1e-3, -1e-3, 1e-3, -2.0])


def test_ada_is_identity_at_zero_scale_and_gated_otherwise():
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(1, 5, 7, 8)), jnp.float32)
    d = jnp.asarray(rng.normal(size=(1, 5, 7, 8)), jnp.float32)
    ada = AdaptiveDepthAttention(backend=BACKEND)
    params = jax.jit(ada.init)(jax.random.key(0), z, d)
    np.testing.assert_array_equal(ada.apply(params, z, d), z)
    p = params["params"]
    scaled = {**p, "scale": jnp.ones(8),
              "gate": {"kernel": jnp.zeros_like(p["gate"]["kernel"]), "bias": jnp.zeros(8)},
              "value": {"kernel": jnp.eye(8)[None, None], "bias": jnp.zeros(8)}}
    np.testing.assert_allclose(ada.apply({"params": scaled}, z, d), z + 0.5 * d, rtol=1e-6)


def test_stem_and_decoder_shapes_and_prefix_exit():
    image = jax.random.uniform(jax.random.key(0), (1, 32, 48, 3))
    stem = BlurStem(width=4, backend=BACKEND)
    states, bottleneck = jax.jit(stem.apply)(
        random_params(jax.eval_shape(stem.init, jax.random.key(0), image), 1), image)
    assert [s.shape for s in states] == [(1, 4, 6, 32), (1, 8, 12, 16), (1, 16, 24, 8),
                                         (1, 32, 48, 4)]
    assert bottleneck.shape == (1, 2, 3, 64) and level_channels(4) == (32, 16, 8, 4)
    depth = tuple(jnp.ones(s.shape[:3] + (3,)) for s in states)
    decoder = ReversibleDecoder(width=4, num_sub_decoders=3, fft=False, backend=BACKEND)
    params = random_params(jax.eval_shape(decoder.init, jax.random.key(0), states, bottleneck,
                                          depth, image), 2)
    assert params["params"]["sub_decoders"]["alpha_0"].shape == (3, 32)
    run = jax.jit(decoder.apply, static_argnums=5)
    full = run(params, states, bottleneck, depth, image, None)
    first = run(params, states, bottleneck, depth, image, 1)
    assert full.shape == (3, 1, 32, 48, 3) and first.shape == (1, 1, 32, 48, 3)
    np.testing.assert_allclose(first[0], full[0], rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(full[2] - full[0]).mean()) > 1e-3


def _grads_of(module, params, *inputs):
    """Output and gradients (params and inputs) of a weighted sum of the module's output."""
    def loss(p, *xs):
        out = module.apply(p, *xs)
        return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape))), out
    return jax.jit(jax.grad(loss, tuple(range(len(inputs) + 1)), has_aux=True))(params, *inputs)


def test_naf_block_and_ada_fast_forms_equal_the_lax_formulation():
    """NAF block (with FFT branch) and ADA on the FAST backend (matmul / shifted convs,
    custom-VJP LayerNorm, gated halves as channel pieces) equal LAX (lax convs, flax's
    LayerNorm formula, concatenate and split): outputs and every gradient."""
    rng = np.random.default_rng(5)
    z = jnp.asarray(rng.normal(size=(2, 10, 14, 8)), jnp.float32)
    d = jnp.asarray(rng.normal(size=(2, 10, 14, 8)), jnp.float32)
    for make, inputs in ((lambda b: NAFBlock(fft=True, backend=b), (z,)),
                         (lambda b: AdaptiveDepthAttention(backend=b), (z, d))):
        params = random_params(jax.eval_shape(make(LAX).init, jax.random.key(0), *inputs), 6)
        (g_fast, out_fast), (g_lax, out_lax) = (_grads_of(make(b), params, *inputs)
                                                for b in (FAST, LAX))
        assert rel_err(out_fast, out_lax) <= 1e-6
        for a, b in zip(jax.tree_util.tree_leaves(g_fast), jax.tree_util.tree_leaves(g_lax)):
            assert rel_err(a, b) <= 1e-5
