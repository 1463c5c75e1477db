"""Reversible backprop equals plain autodiff; the coupling inverse rebuilds the states."""
from __future__ import annotations

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err

from radblur_jax.models.backends import resolve_backend
from radblur_jax.models.decoder import BlurStem, ReversibleDecoder, SubDecoder, sub_decoder_backward
from radblur_jax.models.reversible import inverting_backward, reversible_sequence, segment_length

WIDTH = 4
BACKEND = resolve_backend()  # what training runs here: the fast forms on the CPU


def random_params(abstract, seed: int, scale_std: float = 0.1):
    """Random params shaped like `abstract` (an eval_shape'd params tree), no init compile.

    Kernels ~ N(0, 1/fan_in) (a leading K axis of stacked sub-decoders is not fan-in), alpha
    ~ 0.5 + N(0, 0.05), norm scales ~ 1 + N(0, 0.05), the zero-initialised gains (beta, gamma,
    ADA scale) ~ N(0, scale_std) so every leaf gets a gradient, other vectors ~ N(0, 0.02).
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    rng = np.random.default_rng(seed)  # numpy: no per-shape XLA program to compile
    leaves = []
    for path, leaf in flat:
        name = jax.tree_util.keystr(path)
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        stacked = "sub_decoders" in name
        if name.endswith("['kernel']"):
            fan_in = int(np.prod(leaf.shape[1 if stacked else 0:-1]))
            value = noise / np.sqrt(fan_in)
        elif "alpha" in name:
            value = 0.5 + 0.05 * noise
        elif name.endswith("['scale']") and "norm" in name:
            value = 1.0 + 0.05 * noise
        elif name.split("'")[-2] in ("beta", "gamma", "scale"):
            value = scale_std * noise
        else:
            value = 0.02 * noise
        leaves.append(jnp.asarray(value, leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _decoder_grads(num_sub_decoders: int, height: int, width: int, seed: int):
    """Gradients of a random scalar of the K outputs w.r.t. the decoder params, the stem's
    pyramid and bottleneck (what the stem back-propagates from) and the depth features, with
    reversible backprop on and off. The pyramid is a real stem's output on a random image."""
    image = jax.random.uniform(jax.random.key(seed), (2, height, width, 3))
    stem = BlurStem(width=WIDTH, backend=BACKEND)
    make = lambda rev: ReversibleDecoder(width=WIDTH, num_sub_decoders=num_sub_decoders,
                                         reversible=rev, backend=BACKEND)
    stem_params = random_params(jax.eval_shape(stem.init, jax.random.key(0), image), seed + 1)
    states, bottleneck = jax.jit(stem.apply)(stem_params, image)
    depth = tuple(jax.random.normal(jax.random.key(seed + 2 + k), s.shape[:3] + (5,))
                  for k, s in enumerate(states))
    abstract = jax.eval_shape(make(True).init, jax.random.key(0), states, bottleneck, depth, image)
    params = random_params(abstract, seed + 10)

    def loss(p, s, x, d, rev):
        return jnp.sum(jnp.sin(3.0 * make(rev).apply(p, s, x, d, image)))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)), static_argnums=4)
    args = (params, states, bottleneck, depth)
    return grad(*args, True), grad(*args, False)


def test_reversible_gradients_match_autodiff():
    """The decoder's reversible backprop (its fused backward step: sub-decoder 0 from its
    anchor, sub-decoder 1 rebuilt by inversion) equals plain autodiff. The chain's other
    schedules (segments, `keep_last`) are checked on a small coupling step below."""
    got, want = _decoder_grads(2, 32, 48, 0)
    paths = jax.tree_util.tree_flatten_with_path(want)[0]
    errors = {jax.tree_util.keystr(p): rel_err(g, w) for (p, w), g
              in zip(paths, jax.tree_util.tree_leaves(got))}
    assert len(errors) == 155  # 146 param leaves + 4 states + bottleneck + 4 depth maps
    assert min(float(np.linalg.norm(w)) for _, w in paths) > 0.0
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-5, (worst, errors[worst])


def _coupling_step(p, states, context):
    """A two-part additive coupling with a context input and an output per step:
    `a' = alpha * a + tanh(b @ w1 + c)`, `b' = beta * b + tanh(a' @ w2)`, out `a' * b'`."""
    a, b = states
    a = p["alpha"] * a + jnp.tanh(b @ p["w1"] + context)
    b = p["beta"] * b + jnp.tanh(a @ p["w2"])
    return (a, b), a * b


def _coupling_inverse(p, new, context):
    a, b = new
    b = (b - jnp.tanh(a @ p["w2"])) / p["beta"]
    return (a - jnp.tanh(b @ p["w1"] + context)) / p["alpha"], b


@pytest.mark.parametrize("n,anchor_every,keep_last", [
    (1, 2, False), (1, 2, True), (2, 2, False), (2, 2, True), (3, 2, False), (3, 2, True),
    (4, 2, False), (4, 2, True), (5, 5, False), (5, 5, True), (6, 3, False), (6, 4, True)])
def test_chain_schedules_match_autodiff(n, anchor_every, keep_last):
    """Every schedule of the reversible chain (segments of `segment_length(n, anchor_every)`
    steps, pure inversion, the last step kept from the forward) gives plain autodiff's
    gradients for the params, the initial states and the context."""
    rng = np.random.default_rng(n * 100 + anchor_every * 10 + keep_last)
    d = 6
    normal = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
    params = {"w1": normal(n, d, d) / np.sqrt(d), "w2": normal(n, d, d) / np.sqrt(d),
              "alpha": jnp.asarray(rng.uniform(0.6, 1.2, (n, d)), jnp.float32),
              "beta": jnp.asarray(rng.uniform(0.6, 1.2, (n, d)), jnp.float32)}
    states, context = (normal(3, d), normal(3, d)), normal(3, d)
    weights = normal(n, 3, d)

    def loss(p, s, c, reversible):
        final, outs = reversible_sequence(_coupling_step, _coupling_inverse, p, s, c,
                                          reversible=reversible, anchor_every=anchor_every,
                                          keep_last=keep_last)
        return jnp.sum(jnp.sin(outs) * weights) + jnp.sum(final[0] * final[1])

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    got, want = grad(params, states, context, True), grad(params, states, context, False)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert float(np.linalg.norm(w)) > 0.0
        assert rel_err(g, w) <= 1e-5


def test_inverse_rebuilds_previous_states():
    rng = np.random.default_rng(3)
    shapes = [(2, 4, 6, 32), (2, 8, 12, 16), (2, 16, 24, 8), (2, 32, 48, 4)]
    states = tuple(jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes)
    depth = tuple(jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes)
    context = (jnp.asarray(rng.normal(size=(2, 2, 3, 64)), jnp.float32), depth,
               jnp.asarray(rng.uniform(size=(2, 32, 48, 3)), jnp.float32))
    module = SubDecoder(width=WIDTH, backend=BACKEND)
    params = random_params(jax.eval_shape(module.init, jax.random.key(0), states, context), 4)

    @jax.jit
    def roundtrip(p):
        new, _ = module.apply(p, states, context)
        return new, module.apply(p, new, context, method=SubDecoder.inverse)

    new, rebuilt = roundtrip(params)
    for k in range(4):
        assert rel_err(new[k], states[k]) > 0.5  # the step really changed the state
        assert rel_err(rebuilt[k], states[k]) <= 1e-5


def test_fused_backward_step_equals_inverse_then_vjp():
    """`sub_decoder_backward` (inversion and VJP sharing one coupling evaluation per level)
    gives the generic backward step's input states and cotangents: inverse, then `jax.vjp`
    of the recomputed step. With `use_anchor` the states come from the anchor instead."""
    rng = np.random.default_rng(7)
    shapes = [(2, 4, 6, 32), (2, 8, 12, 16), (2, 16, 24, 8), (2, 32, 48, 4)]
    normal = lambda s: jnp.asarray(rng.normal(size=s), jnp.float32)
    states = tuple(normal(s) for s in shapes)
    context = (normal((2, 2, 3, 64)), tuple(normal(s) for s in shapes),
               jnp.asarray(rng.uniform(size=(2, 32, 48, 3)), jnp.float32))
    module = SubDecoder(width=WIDTH, backend=BACKEND)
    params = random_params(jax.eval_shape(module.init, jax.random.key(0), states, context),
                           8)["params"]
    step = lambda p, s, c: module.apply({"params": p}, s, c)
    inverse = lambda p, s, c: module.apply({"params": p}, s, c, method=SubDecoder.inverse)
    new, _ = jax.jit(step)(params, states, context)
    g_new = tuple(normal(s) for s in shapes)
    g_image = normal((2, 32, 48, 3))
    fused = jax.jit(lambda *a: sub_decoder_backward(module, *a))
    generic = jax.jit(inverting_backward(step, inverse))
    for use_anchor in (False, True):
        args = (params, new, states, jnp.asarray(use_anchor), context, g_new, g_image)
        got, want = fused(*args), generic(*args)
        assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
        # Each output (states, param cotangents, state cotangents, ...) within 1e-5 as a
        # whole; each leaf within 5e-5: a leaf of a few channels is a sum over every pixel,
        # and two orders of that sum differ by float32 rounding (1.2e-5 seen on one CPU).
        for part_got, part_want in zip(got, want):
            leaves = list(zip(jax.tree_util.tree_leaves(part_got),
                              jax.tree_util.tree_leaves(part_want)))
            assert rel_err(np.concatenate([np.ravel(a) for a, _ in leaves]),
                           np.concatenate([np.ravel(b) for _, b in leaves])) <= 1e-5
            assert max(rel_err(a, b) for a, b in leaves) <= 5e-5
        if use_anchor:
            for a, b in zip(got[0], states):
                np.testing.assert_array_equal(a, b)


def test_segment_length_tiles_the_chain():
    assert [segment_length(8, a) for a in (1, 2, 3, 4, 8, 100)] == [1, 2, 2, 4, 8, 8]
    assert segment_length(6, 4) == 3 and segment_length(5, 2) == 1


def _loops(jaxpr: jax_core.Jaxpr) -> list[str]:
    """The loops XLA keeps: every `while` and every `scan` of more than one step that is not
    fully unrolled, in `jaxpr` and the jaxprs nested in its equations. (A one-step scan lowers
    to a one-trip loop, which XLA removes.)"""
    found = []
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "while":
            found.append(name)
        elif name == "scan":
            length, unroll = eqn.params["length"], eqn.params["unroll"]
            if length > 1 and unroll is not True and unroll < length:
                found.append(f"scan of {length}")
        for sub in jax_core.jaxprs_in_params(eqn.params):
            found += _loops(sub)
    return found


@pytest.mark.parametrize("keep_last", [False, True])
def test_unrolled_chain_traces_without_loops(keep_last):
    """`unroll=True` unrolls the forward segments and the reversible backward too: XLA's cost
    analysis counts a loop body once, so a loop left in the counted step hides steps. The
    rolled chain (`unroll=False`) keeps its loops."""
    image = jnp.zeros((1, 32, 32, 3))
    states, bottleneck = jax.eval_shape(BlurStem(width=WIDTH, backend=BACKEND).init_with_output,
                                        jax.random.key(0), image)[0]
    states = tuple(jnp.zeros(s.shape) for s in states)
    bottleneck = jnp.zeros(bottleneck.shape)

    def grad_loops(unroll: bool) -> list[str]:
        decoder = ReversibleDecoder(width=WIDTH, num_sub_decoders=4, depth_attention=False,
                                    unroll=unroll, keep_last=keep_last, backend=BACKEND)
        params = jax.eval_shape(decoder.init, jax.random.key(0), states, bottleneck, None, image)
        loss = lambda p, s: jnp.sum(decoder.apply(p, s, bottleneck, None, image))
        return _loops(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(params, states).jaxpr)

    assert grad_loops(True) == []
    assert grad_loops(False)
