"""attention_ops: the blocked CPU kernel against jax.nn.dot_product_attention (values and grads)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err

from radblur_jax.models import attention_ops as ops


def _qkv(seed: int, b: int, t: int, h: int, d: int, tk: int | None = None, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    tk = t if tk is None else tk
    q = rng.standard_normal((b, t, h, d)).astype(np.float32) * scale
    k = rng.standard_normal((b, tk, h, d)).astype(np.float32) * scale
    v = rng.standard_normal((b, tk, h, d)).astype(np.float32)
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)


def _xla(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")


@pytest.mark.parametrize("b,t,h,d", [(1, 1370, 2, 64), (2, 197, 3, 64), (1, 5, 1, 8)])
def test_blocked_matches_xla(b, t, h, d):
    q, k, v = _qkv(0, b, t, h, d)
    got = jax.jit(ops.blocked_attention)(q, k, v)
    assert got.shape == (b, t, h, d) and got.dtype == jnp.float32
    assert rel_err(got, _xla(q, k, v)) <= 1e-6


@pytest.mark.parametrize("query_tile,heads_per_step", [(64, 1), (100, 2), (512, 4), (1, 3)])
def test_query_tiles_and_head_steps_with_remainders(query_tile, heads_per_step):
    # 197 = 3*64 + 5 = 100 + 97; 2*3 = 6 heads with 4 per step leaves 2: padded query rows and
    # remainder head groups must not change any output row.
    q, k, v = _qkv(1, 2, 197, 3, 32)
    f = jax.jit(functools.partial(ops.blocked_attention, query_tile=query_tile,
                                  heads_per_step=heads_per_step))
    assert rel_err(f(q, k, v), _xla(q, k, v)) <= 1e-6


def test_automatic_query_tiling_for_long_sequences(monkeypatch):
    monkeypatch.setattr(ops, "HEAD_BATCH_ELEMS", 197 * 50)
    monkeypatch.setattr(ops, "QUERY_TILE_ELEMS", 197 * 50)  # 4 tiles of 50 query rows
    q, k, v = _qkv(2, 1, 197, 2, 16)
    assert rel_err(jax.jit(ops.blocked_attention)(q, k, v), _xla(q, k, v)) <= 1e-6


def test_plan_tiles():
    budgets = dict(head_budget=700_000, tile_budget=700_000)
    assert ops.plan_tiles(48, 1370, 1370, **budgets) == (1, 457)  # 3 tiles, 1 padded row
    assert ops.plan_tiles(48, 197, 197, **budgets) == (18, 197)
    assert ops.plan_tiles(2, 197, 197, **budgets) == (2, 197)
    assert ops.plan_tiles(1, 10, 10, head_budget=1, tile_budget=1) == (1, 1)
    # the defaults: ViT-S at 518 px keeps a head whole, at 1280x720 (4784 tokens) 4 tiles
    assert ops.plan_tiles(6, 1370, 1370) == (1, 1370)
    assert ops.plan_tiles(6, 4784, 4784) == (1, 1196)
    assert ops.plan_tiles(24, 330, 330) == (9, 330)


@pytest.mark.parametrize("query_tile", [50, 197, 500])
def test_unrolled_query_tiles(query_tile):
    q, k, v = _qkv(9, 1, 197, 2, 32)
    f = jax.jit(functools.partial(ops.blocked_attention, query_tile=query_tile,
                                  unroll_tiles=True))
    assert rel_err(f(q, k, v), _xla(q, k, v)) <= 1e-6


def test_cross_attention_lengths():
    q, k, v = _qkv(3, 2, 197, 2, 32, tk=61)
    got = jax.jit(functools.partial(ops.blocked_attention, query_tile=50))(q, k, v)
    assert rel_err(got, _xla(q, k, v)) <= 1e-6


def test_large_logits_are_stable():
    q, k, v = _qkv(4, 1, 197, 2, 64, scale=12.0)  # logits in the hundreds
    got = jax.jit(ops.blocked_attention)(q, k, v)
    assert bool(jnp.all(jnp.isfinite(got)))
    assert rel_err(got, _xla(q, k, v)) <= 1e-6


@pytest.mark.parametrize("query_tile", [None, 64])
def test_gradients_match_xla(query_tile):
    q, k, v = _qkv(5, 2, 197, 2, 32)
    w = jnp.asarray(np.random.default_rng(6).standard_normal(q.shape).astype(np.float32))

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v) * w)

    blocked = functools.partial(ops.blocked_attention, query_tile=query_tile)
    got = jax.jit(jax.grad(functools.partial(loss, blocked), argnums=(0, 1, 2)))(q, k, v)
    want = jax.jit(jax.grad(functools.partial(loss, _xla), argnums=(0, 1, 2)))(q, k, v)
    for g, r in zip(got, want):
        assert rel_err(g, r) <= 2e-6


def test_bfloat16_inputs_keep_dtype():
    q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(7, 1, 197, 2, 32))
    got = jax.jit(ops.blocked_attention)(q, k, v)
    want = _xla(*(x.astype(jnp.float32) for x in (q, k, v)))
    assert got.dtype == jnp.bfloat16 and rel_err(got.astype(jnp.float32), want) <= 1e-2


def test_dispatch():
    q, k, v = _qkv(8, 1, 19, 2, 8)
    want = _xla(q, k, v)
    for impl in ("auto", "xla", "blocked"):
        assert rel_err(ops.attention(q, k, v, impl), want) <= 1e-6
    if jax.default_backend() == "cpu":
        with pytest.raises(Exception):  # noqa: B017 (whatever XLA raises for a GPU-only op)
            ops.attention(q, k, v, "cudnn")  # GPU only
    with pytest.raises(ValueError, match="unknown attention impl"):
        ops.attention(q, k, v, "flash")
    with pytest.raises(ValueError, match="do not match"):
        ops.blocked_attention(q, k[:, :, :1], v)
