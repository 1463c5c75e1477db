"""Reversible backprop for a chain of invertible steps, as a `jax.custom_vjp`.

A chain applies `step(p_i, states, context) -> (states, out_i)` for i = 0..n-1, where the
params `p_i` are slices of a tree stacked on a leading axis. Plain autodiff stores every step's
activations. With `reversible=True` the forward stores only the states entering every
`anchor_every`-th step (the "anchors"; one state pyramid each, a few % of one step's
activations) and the final states; the backward walks the chain in reverse, taking the input
of an anchor step from its anchor and rebuilding that of every other step with
`inverse(p_i, new_states, context)`, and back-propagates through one recomputed step at a
time. `anchor_every >= n` is pure inversion (only the initial states are kept). Anchors bound
how far float32 inversion errors compound (docs/architecture.md).
The forward and the backward are each one `lax.scan` (one compiled copy of the step, of its
inverse and of its VJP), so compile time does not grow with n.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Step = Callable[[Any, Any, Any], tuple[Any, jax.Array]]
Inverse = Callable[[Any, Any, Any], Any]
# backward_step(p, new_states, anchor, use_anchor, context, g_new_states, g_out)
#   -> (states, g_p, g_states, g_context)
BackwardStep = Callable[..., tuple[Any, Any, Any, Any]]
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

    `unroll=True` unrolls it (XLA's cost analysis then counts every step's FLOPs); the
    reversible backward's scan takes the same `unroll`.
    """
    return jax.lax.scan(lambda s, p: step(p, s, context), states, params, unroll=unroll)


def inverting_backward(step: Step, inverse: Inverse) -> BackwardStep:
    """The generic `BackwardStep`: the input states are the anchor or `inverse(p, new, c)`,
    then one `jax.vjp` of the recomputed step."""
    def backward(p, new, anchor, use_anchor, context, g_new, g_out):
        previous = jax.lax.cond(use_anchor, lambda: anchor, lambda: inverse(p, new, context))
        _, step_vjp = jax.vjp(step, p, previous, context)
        g_p, g_previous, g_context = step_vjp((g_new, g_out))
        return previous, g_p, g_previous, g_context
    return backward


def _concat(*trees: Any) -> Any:
    return tmap(lambda *xs: jnp.concatenate(xs), *trees)


def _reversible_chain(step: Step, inverse: Inverse, anchor_every: int, unroll: int | bool,
                      backward_step: BackwardStep | None = None,
                      keep_last: bool = False) -> Callable:
    """`chain(params, states, context) -> (final_states, outputs)` with inverting backward.

    `keep_last`: the forward runs the last step under `jax.vjp` and keeps its residuals, so
    the backward starts from them instead of rebuilding and re-running that step (the step
    the backward needs first, right after the forward ends); it keeps that step's input
    states too.
    """
    backward_step = backward_step or inverting_backward(step, inverse)

    @jax.custom_vjp
    def chain(params, states, context):
        return _forward(step, params, states, context, unroll)

    def run_segments(params, states, context, n, a):
        """The first `n` steps in segments of `a`: (end states, anchors, outputs)."""
        segments = tmap(lambda x: x[:n].reshape((n // a, a) + x.shape[1:]), params)

        def run_segment(s, seg_params):
            end, outs = _forward(step, seg_params, s, context, unroll)
            return end, (s, outs)

        end, (anchors, outs) = jax.lax.scan(run_segment, states, segments, unroll=unroll)
        return end, anchors, outs.reshape((n,) + outs.shape[2:])

    def chain_fwd(params, states, context):
        n = _num_steps(params)
        a = segment_length(n, anchor_every)
        if not keep_last:
            final, anchors, outs = run_segments(params, states, context, n, a)
            return (final, outs), (params, anchors, final, None, context)
        # Full segments, then the last segment: its anchor, its steps but the last, and the
        # last step under jax.vjp.
        head = n - a
        s, anchors, outs = (run_segments(params, states, context, head, a) if head
                            else (states, None, None))
        last_anchor = tmap(lambda x: x[None], s)
        anchors = last_anchor if anchors is None else _concat(anchors, last_anchor)
        if a > 1:
            s, tail = _forward(step, tmap(lambda x: x[head:n - 1], params), s, context, unroll)
            outs = tail if outs is None else _concat(outs, tail)
        (final, last), last_vjp = jax.vjp(step, tmap(lambda x: x[n - 1], params), s, context)
        outs = last[None] if outs is None else _concat(outs, last[None])
        return (final, outs), (params, anchors, s, last_vjp, context)

    def chain_bwd(residuals, cotangents):
        params, anchors, states, last_vjp, context = residuals
        g_final, g_outs = cotangents
        n = _num_steps(params)
        a = segment_length(n, anchor_every)

        def back_one_step(carry, xs):
            states, g_states, g_context = carry
            i, p, g_out = xs
            # The input of step i is its segment's anchor when i starts a segment, else it is
            # rebuilt by inverting the step. One body (and one compiled copy of the step's
            # VJP) serves every step.
            anchor = tmap(lambda x: x[i // a], anchors)
            previous, g_p, g_previous, g_ctx = backward_step(
                p, states, anchor, i % a == 0, context, g_states, g_out)
            return (previous, g_previous, tmap(jnp.add, g_context, g_ctx)), g_p

        m, g_last = n, None
        g_context = tmap(jnp.zeros_like, context)
        if last_vjp is not None:  # the last step from its kept residuals
            g_last, g_final, g_context = last_vjp((g_final, g_outs[n - 1]))
            m = n - 1
        if m:  # `states`: the final states, or the last step's input when it was kept
            xs = (jnp.arange(m), tmap(lambda x: x[:m], params), g_outs[:m])
            (_, g_final, g_context), g_params = jax.lax.scan(
                back_one_step, (states, g_final, g_context), xs, reverse=True, unroll=unroll)
            if g_last is not None:
                g_params = _concat(g_params, tmap(lambda x: x[None], g_last))
        else:
            g_params = tmap(lambda x: x[None], g_last)
        return g_params, g_final, g_context

    chain.defvjp(chain_fwd, chain_bwd)
    return chain


def reversible_sequence(step: Step, inverse: Inverse, params: Any, states: Any, context: Any,
                        *, reversible: bool = True, anchor_every: int = 2,
                        unroll: int | bool = 1, backward_step: BackwardStep | None = None,
                        keep_last: bool = False) -> tuple[Any, jax.Array]:
    """Runs the chain over `params`' leading axis; returns `(final_states, outputs (n, ...))`.

    `step` and `inverse` must be pure; `inverse(p, step(p, s, c)[0], c)` must equal `s`.
    Gradients flow to `params`, the initial `states` and `context` on both paths.
    `backward_step(p, new, anchor, use_anchor, context, g_new, g_out) -> (states, g_p, g_states,
    g_context)` is one step of the backward walk: the step's input `states` (`anchor` where
    `use_anchor`, else rebuilt from its output `new`) and the cotangents of its params, input
    states and context. The default inverts, then takes one `jax.vjp` of the recomputed step;
    a step that can share the inversion's work with its VJP passes its own (the decoder does).
    """
    if reversible:
        chain = _reversible_chain(step, inverse, anchor_every, unroll, backward_step,
                                  keep_last)
        return chain(params, states, context)
    return _forward(step, params, states, context, unroll)


def early_exit_forward(step: Step, params: Any, states: Any, context: Any,
                       exit_steps: jax.Array) -> jax.Array:
    """The chain without gradients, stopped early: a `lax.while_loop` runs steps
    `1..max(exit_steps)` only; batch element b keeps the output of step `exit_steps[b]`.

    `exit_steps (B,)` int in 1..n (the batch is the outputs' leading axis); returns one output
    `(B, ...)` (the shape of `step`'s second result).
    """
    first = jax.tree_util.tree_map(lambda a: a[0], params)
    out_shape = jax.eval_shape(step, first, states, context)[1]
    exit_steps = jnp.asarray(exit_steps, jnp.int32)
    last = jnp.max(exit_steps)

    def body(carry):
        i, s, kept = carry
        p = jax.tree_util.tree_map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False),
                                   params)
        s, out = step(p, s, context)
        hit = (exit_steps == i + 1).reshape((-1,) + (1,) * (out.ndim - 1))
        return i + 1, s, jnp.where(hit, out, kept)

    init = (jnp.int32(0), states, jnp.zeros(out_shape.shape, out_shape.dtype))
    return jax.lax.while_loop(lambda c: c[0] < last, body, init)[2]
