"""Multi-head attention kernels selected per backend.

`attention(q, k, v, impl)` takes `(B, T, H, Dh)` queries/keys/values and returns `(B, T, H, Dh)`,
softmax scale `Dh ** -0.5`, no mask. `impl`:
  - "xla":     `jax.nn.dot_product_attention(implementation="xla")`.
  - "cudnn":   the fused cuDNN kernel (GPU only).
  - "blocked": head-chunked attention for CPU (see `blocked_attention`).
  - "auto":    cudnn on GPU for bf16/fp16, blocked on CPU, else xla.

Why "blocked" on CPU (2-core x86-64, jaxlib 0.10.2, ViT-S at 518 px: 8 x 6 heads, 1370 tokens,
Dh 64; docs/benchmarks.md): the XLA path materialises all `B*H` score matrices (360 MB) and runs
at ~36 GFLOP/s; looping over heads with `lax.map` keeps one `T x T` score matrix (7.5 MB) hot
in cache, and XLA CPU lowers each step's dot + max + exp into one YNNPACK fusion; ~150-180
GFLOP/s. Batching all heads into one big batched dot (the "query-chunked" reshape) measured
2-5x slower than the loop on XLA CPU, so the loop is over heads and, for long sequences only,
over query tiles inside a head.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "cudnn", "blocked")

# Heads processed per `lax.map` step, and the score-tile budget (elements of one `tq x T` tile)
# above which queries are tiled too. Measured on the 2-core CPU above; see benchmarks/.
HEADS_PER_STEP = 2
MAX_SCORE_ELEMS = 1 << 22  # 16 MiB of float32 scores per head step


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
    if impl == "blocked":
        return blocked_attention(q, k, v)
    raise ValueError(f"unknown attention impl {impl!r}; expected one of {IMPLS}")


def _head_softmax_attend(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Exact softmax attention for pre-scaled float32 `q (..., tq, Dh)`, `k, v (..., T, Dh)`."""
    s = jnp.einsum("...qd,...kd->...qk", q, k, preferred_element_type=jnp.float32)
    e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
    o = jnp.einsum("...qk,...kd->...qd", e, v, preferred_element_type=jnp.float32)
    return o / jnp.sum(e, axis=-1, keepdims=True)


def blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                      heads_per_step: int = HEADS_PER_STEP,
                      query_tile: int | None = None) -> jax.Array:
    """Head-chunked exact attention, `(B, T, H, Dh)` in and out, float32 math.

    Heads are flattened to `B*H` and visited `heads_per_step` at a time with `lax.map`, so only
    that many `(T, T)` score matrices are live. Queries are further split into tiles of
    `query_tile` rows (default: none unless `T*T` exceeds `MAX_SCORE_ELEMS`); each tile sees all
    keys, so its softmax is exact and no key padding exists. Padded query rows are dropped.
    Differentiable (reverse mode through `lax.map`; the step is rematerialised).
    """
    b, t, h, d = q.shape
    tk = k.shape[1]
    if k.shape != (b, tk, h, d) or v.shape != k.shape:
        raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} do not match "
                         "(B, T, H, Dh) / (B, Tk, H, Dh)")
    out_dtype = q.dtype
    n = b * h

    def heads(x: jax.Array, scale: float = 1.0) -> jax.Array:
        x = x.astype(jnp.float32)
        if scale != 1.0:
            x = x * scale
        return jnp.transpose(x, (0, 2, 1, 3)).reshape(n, x.shape[1], d)

    qh, kh, vh = heads(q, d ** -0.5), heads(k), heads(v)
    if query_tile is None and t * tk > MAX_SCORE_ELEMS:
        query_tile = max(8, MAX_SCORE_ELEMS // tk // 8 * 8)
    if query_tile is not None and query_tile < t:
        nt = -(-t // query_tile)
        qh = jnp.pad(qh, ((0, 0), (0, nt * query_tile - t), (0, 0)))
        qh = qh.reshape(n, nt, query_tile, d)

        def step(args):
            qs, ks, vs = args  # (nt, tq, d), (tk, d), (tk, d)
            o = jax.lax.map(lambda qt: _head_softmax_attend(qt, ks, vs), qs)
            return o.reshape(nt * query_tile, d)[:t]
        hps = 1
    else:
        def step(args):
            return _head_softmax_attend(*args)
        hps = max(1, min(heads_per_step, n))
    out = jax.lax.map(jax.checkpoint(step), (qh, kh, vh), batch_size=hps if hps > 1 else None)
    out = jnp.transpose(out.reshape(b, h, t, d), (0, 2, 1, 3))
    return out.astype(out_dtype)
