"""Reversible backprop for a chain of invertible steps, as a `jax.custom_vjp`.

A chain applies `step(p_i, states, context) -> (states, out_i)` for i = 0..n-1, where the
params `p_i` are slices of a tree stacked on a leading axis. Plain autodiff stores every step's
activations. With `reversible=True` the forward stores only the states entering every
`anchor_every`-th step (the "anchors"; one state pyramid each, a few % of one step's
activations) and the final states; the backward walks each segment in reverse, rebuilding the
input of every non-anchor step with `inverse(p_i, new_states, context)` and back-propagating
through one recomputed step at a time. `anchor_every >= n` is pure inversion (only the initial
states are kept). Anchors bound how far float32 inversion errors compound (docs/architecture.md).
Both forwards are one `lax.scan`, so compile time does not grow with n.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Step = Callable[[Any, Any, Any], tuple[Any, jax.Array]]
Inverse = Callable[[Any, Any, Any], Any]
tmap = jax.tree_util.tree_map


def _num_steps(params: Any) -> int:
    return jax.tree_util.tree_leaves(params)[0].shape[0]


def segment_length(num_steps: int, anchor_every: int) -> int:
    """Largest divisor of `num_steps` that is <= `anchor_every` (segments must tile the chain)."""
    a = max(1, min(int(anchor_every), num_steps))
    while num_steps % a:
        a -= 1
    return a


def _forward(step: Step, params: Any, states: Any, context: Any,
             unroll: int | bool = 1) -> tuple[Any, jax.Array]:
    """The chain as a `lax.scan` over the stacked params: `(final_states, outputs (n, ...))`.

    `unroll=True` unrolls it (XLA's cost analysis then counts every step's FLOPs).
    """
    return jax.lax.scan(lambda s, p: step(p, s, context), states, params, unroll=unroll)


def _reversible_chain(step: Step, inverse: Inverse, anchor_every: int,
                      unroll: int | bool) -> Callable:
    """`chain(params, states, context) -> (final_states, outputs)` with inverting backward."""

    @jax.custom_vjp
    def chain(params, states, context):
        return _forward(step, params, states, context, unroll)

    def chain_fwd(params, states, context):
        n = _num_steps(params)
        a = segment_length(n, anchor_every)
        segments = tmap(lambda x: x.reshape((n // a, a) + x.shape[1:]), params)

        def run_segment(s, seg_params):
            end, outs = _forward(step, seg_params, s, context, unroll)
            return end, (s, outs)

        final, (anchors, outs) = jax.lax.scan(run_segment, states, segments)
        outs = outs.reshape((n,) + outs.shape[2:])
        return (final, outs), (segments, anchors, final, context)

    def chain_bwd(residuals, cotangents):
        segments, anchors, final, context = residuals
        g_final, g_outs = cotangents
        g_outs = g_outs.reshape(jax.tree_util.tree_leaves(segments)[0].shape[:2]
                                + g_outs.shape[1:])
        ends = tmap(lambda x, f: jnp.concatenate([x[1:], f[None]]), anchors, final)

        def vjp_one_step(p, previous, g_states, g_out, g_context):
            _, step_vjp = jax.vjp(step, p, previous, context)
            g_p, g_previous, g_ctx = step_vjp((g_states, g_out))
            return g_p, g_previous, tmap(jnp.add, g_context, g_ctx)

        def back_one_step(carry, xs):
            states, g_states, g_context = carry
            p, g_out = xs
            previous = inverse(p, states, context)
            g_p, g_previous, g_context = vjp_one_step(p, previous, g_states, g_out, g_context)
            return (previous, g_previous, g_context), g_p

        def back_one_segment(carry, xs):
            g_states, g_context = carry
            seg_params, anchor, end, g_seg_outs = xs
            # Steps 1.. of the segment rebuild their input by inversion; step 0 reads the anchor.
            later = tmap(lambda x: x[1:], seg_params)
            (_, g_states, g_context), g_later = jax.lax.scan(
                back_one_step, (end, g_states, g_context), (later, g_seg_outs[1:]),
                reverse=True)
            first = tmap(lambda x: x[0], seg_params)
            g_first, g_states, g_context = vjp_one_step(first, anchor, g_states, g_seg_outs[0],
                                                        g_context)
            g_seg = tmap(lambda x, y: jnp.concatenate([x[None], y]), g_first, g_later)
            return (g_states, g_context), g_seg

        g_context0 = tmap(jnp.zeros_like, context)
        (g_initial, g_context), g_segments = jax.lax.scan(
            back_one_segment, (g_final, g_context0), (segments, anchors, ends, g_outs),
            reverse=True)
        g_params = tmap(lambda x: x.reshape((-1,) + x.shape[2:]), g_segments)
        return g_params, g_initial, g_context

    chain.defvjp(chain_fwd, chain_bwd)
    return chain


def reversible_sequence(step: Step, inverse: Inverse, params: Any, states: Any, context: Any,
                        *, reversible: bool = True, anchor_every: int = 2,
                        unroll: int | bool = 1) -> tuple[Any, jax.Array]:
    """Runs the chain over `params`' leading axis; returns `(final_states, outputs (n, ...))`.

    `step` and `inverse` must be pure; `inverse(p, step(p, s, c)[0], c)` must equal `s`.
    Gradients flow to `params`, the initial `states` and `context` on both paths.
    """
    if reversible:
        return _reversible_chain(step, inverse, anchor_every, unroll)(params, states, context)
    return _forward(step, params, states, context, unroll)
