"""Multi-head attention kernels selected per backend.

`attention(q, k, v, impl)` takes `(B, T, H, Dh)` queries/keys/values and returns `(B, T, H, Dh)`,
softmax scale `Dh ** -0.5`, no mask. `impl`:
  - "xla":     `jax.nn.dot_product_attention(implementation="xla")`.
  - "cudnn":   the fused cuDNN kernel (GPU only).
  - "blocked": head- and query-tiled exact attention for CPU (see `blocked_attention`).
  - "auto":    cudnn on GPU for bf16/fp16, blocked on CPU, else xla.

Why "blocked" on CPU: the XLA path materialises all `B*H` score matrices at once (hundreds of
MB for ViT-S at 518 px) and runs far below the machine's matmul rate; looping over heads with
`lax.map` keeps one head's scores in cache, and XLA:CPU lowers each step's dot + max + exp into
one fusion. Batching all heads or query chunks into one big batched dot (the "query-chunked"
reshape) ran slower than the loop on XLA:CPU, as did several heads per step on long sequences;
so the loop is over heads, then query tiles of a head. Query tiles are large (a few million
scores): XLA:CPU's dots with a 64-wide contraction run far below its matmul rate on a few
hundred rows and near it on a thousand or more, which outweighs the cache. Online softmax
over key tiles is not needed: a query tile with all keys is a few tens of MB at most.
Measurements: benchmarks/attention_cpu.py and docs/benchmarks.md.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from radblur_jax.models.spmd import batchwise

IMPLS = ("auto", "xla", "cudnn", "blocked")

# Score elements per `lax.map` step. Short sequences batch several heads per step while the
# step's scores stay within HEAD_BATCH_ELEMS; a head whose scores exceed QUERY_TILE_ELEMS is
# split into the fewest equal query tiles within it (benchmarks/attention_cpu.py: at 4784
# tokens, tiles of ~1200 rows ran ~20% faster than tiles of ~200).
HEAD_BATCH_ELEMS = 1_000_000
QUERY_TILE_ELEMS = 6_000_000


def plan_tiles(n_heads: int, t: int, tk: int, head_budget: int | None = None,
               tile_budget: int | None = None) -> tuple[int, int]:
    """(heads per step, query rows per tile) for `n_heads` heads of `t` queries x `tk` keys."""
    head_budget = HEAD_BATCH_ELEMS if head_budget is None else head_budget
    tile_budget = QUERY_TILE_ELEMS if tile_budget is None else tile_budget
    if t * tk <= head_budget:
        return max(1, min(n_heads, head_budget // (t * tk))), t
    n_tiles = -(-t * tk // tile_budget)
    return 1, -(-t // n_tiles)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, impl: str = "auto") -> jax.Array:
    """Scaled dot-product attention over `(B, T, H, Dh)` arrays, returns `(B, T, H, Dh)`."""
    if impl == "auto":
        backend = jax.default_backend()
        if backend == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16):
            impl = "cudnn"
        elif backend == "cpu":
            impl = "blocked"
        else:
            impl = "xla"
    if impl in ("xla", "cudnn"):
        return jax.nn.dot_product_attention(q, k, v, implementation=impl)
    if impl == "blocked":  # a loop over batch x heads: per device on a sharded batch
        return batchwise(blocked_attention)(q, k, v)
    raise ValueError(f"unknown attention impl {impl!r}; expected one of {IMPLS}")


def _head_softmax_attend(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Exact softmax attention for pre-scaled float32 `q (..., tq, Dh)`, `k, v (..., T, Dh)`."""
    s = jnp.einsum("...qd,...kd->...qk", q, k, preferred_element_type=jnp.float32)
    e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
    o = jnp.einsum("...qk,...kd->...qd", e, v, preferred_element_type=jnp.float32)
    return o / jnp.sum(e, axis=-1, keepdims=True)


def blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                      heads_per_step: int | None = None, query_tile: int | None = None,
                      unroll_tiles: bool = False) -> jax.Array:
    """Head- and query-tiled exact attention, `(B, T, H, Dh)` in and out, float32 math.

    Heads are flattened to `B*H` and visited `heads_per_step` at a time by `lax.map`; within a
    step queries are split into tiles of `query_tile` rows (defaults: `plan_tiles`), visited by
    an inner `lax.map` over zero-padded tiles (padded rows dropped) or, with `unroll_tiles`, by
    static slices. Every tile sees all keys, so its softmax is exact and no key padding exists.
    Differentiable (reverse mode through `lax.map`; each step is rematerialised).
    """
    b, t, h, d = q.shape
    tk = k.shape[1]
    if k.shape != (b, tk, h, d) or v.shape != k.shape:
        raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} do not match "
                         "(B, T, H, Dh) / (B, Tk, H, Dh)")
    n = b * h
    auto_hps, auto_tile = plan_tiles(n, t, tk)
    hps = max(1, min(n, heads_per_step or auto_hps))
    tile = min(t, query_tile or auto_tile)

    def heads(x: jax.Array, scale: float = 1.0) -> jax.Array:
        x = x.astype(jnp.float32)
        if scale != 1.0:
            x = x * scale
        return jnp.transpose(x, (0, 2, 1, 3)).reshape(n, x.shape[1], d)

    qh, kh, vh = heads(q, d ** -0.5), heads(k), heads(v)
    if tile < t and unroll_tiles:
        def step(args):
            qs, ks, vs = args  # (..., t, d), (..., tk, d), (..., tk, d)
            return jnp.concatenate([_head_softmax_attend(qs[..., i:i + tile, :], ks, vs)
                                    for i in range(0, t, tile)], axis=-2)
    elif tile < t:
        nt = -(-t // tile)
        qh = jnp.pad(qh, ((0, 0), (0, nt * tile - t), (0, 0))).reshape(n, nt, tile, d)

        def step(args):
            qs, ks, vs = args  # (..., nt, tile, d), (..., tk, d), (..., tk, d)
            o = jax.lax.map(lambda qt: _head_softmax_attend(qt, ks, vs),
                            jnp.moveaxis(qs, -3, 0))
            o = jnp.moveaxis(o, 0, -3)
            return o.reshape(*o.shape[:-3], nt * tile, d)[..., :t, :]
    else:
        def step(args):
            return _head_softmax_attend(*args)
    out = jax.lax.map(jax.checkpoint(step), (qh, kh, vh), batch_size=hps if hps > 1 else None)
    out = jnp.transpose(out.reshape(b, h, t, d), (0, 2, 1, 3))
    return out.astype(q.dtype)
