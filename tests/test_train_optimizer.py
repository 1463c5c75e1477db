"""Tests for radblur_jax/train/optimizer.py."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from radblur_jax.train import optimizer as opt


def _config(num_steps: int = 100, **overrides) -> ml_collections.ConfigDict:
    oc = opt.default_optimizer_config()
    # Plain Adam unless a test asks for more: every knob is switched on one test at a time.
    oc.update(dict(lr=1e-2, weight_decay=0.0, warmup_steps=0, schedule="constant",
                   clip_norm=0.0, layer_decay=1.0, freeze=[], accumulate_steps=1))
    oc.update(overrides)
    return ml_collections.ConfigDict(dict(optimizer=oc, train=dict(num_steps=num_steps)))


# Both layouts of the moments run the same maths: the behaviour tests run on each.
LAYOUTS = pytest.mark.parametrize("layout", ["flat", "per_leaf"])


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture
def vit_tree():
    """A small tree shaped like RADBlur's: ViT (4 blocks) + DPT under depth/, decoder, stem."""
    rng = np.random.default_rng(0)
    r = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    blocks = {f"blocks_{i}": {"attn": {"qkv": {"kernel": r(4, 6), "bias": r(6)}},
                              "ls1": {"gamma": r(4)}, "norm1": {"scale": r(4), "bias": r(4)}}
              for i in range(4)}
    pretrained = {**blocks, "patch_embed": {"proj": {"kernel": r(2, 2, 3, 4), "bias": r(4)}},
                  "pos_embed": r(1, 5, 4), "cls_token": r(1, 1, 4), "mask_token": r(1, 4),
                  "register_tokens": r(1, 2, 4), "norm": {"scale": r(4), "bias": r(4)}}
    return {"depth": {"pretrained": pretrained,
                      "depth_head": {"projects_0": {"kernel": r(1, 1, 4, 3), "bias": r(3)}}},
            "decoder": {"sub_decoders": {"alpha_0": r(2, 3), "head": {"kernel": r(2, 3, 3, 3, 3)}}},
            "stem": {"intro": {"kernel": r(3, 3, 3, 2), "bias": r(2)}}}


@pytest.fixture(scope="module")
def radblur_tiny_params():
    """Random params with the exact tree of the `tiny` RADBlur preset (shapes via eval_shape)."""
    from radblur_jax.models.radblur import build_radblur
    model = build_radblur("tiny")
    shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)))["params"],
                            jax.random.key(0))
    rng = np.random.default_rng(1)
    return jax.tree_util.tree_map(
        lambda leaf: jnp.asarray(rng.standard_normal(leaf.shape), jnp.float32), shapes)


def _run(tx, params, grads_seq):
    """Applies `tx` to each gradient tree in turn; returns the list of params after each."""
    state = jax.jit(tx.init)(params)
    update = jax.jit(tx.update)
    out = []
    for g in grads_seq:
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
        out.append(params)
    return out


def _paths_where(tree) -> set[str]:
    return {opt.path_str(p) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0] if bool(x)}


# ---------------------------------------------------------------- schedule


def test_warmup_cosine_values():
    cfg = _config(num_steps=110, lr=1e-3, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    lr = opt.learning_rate_fn(cfg)
    expected = {0: 0.0, 5: 5e-4, 10: 1e-3, 60: 1e-3 * (0.1 + 0.9 * 0.5),
                35: 1e-3 * (0.1 + 0.9 * (1 + math.cos(math.pi * 0.25)) / 2), 110: 1e-4, 500: 1e-4}
    for step, want in expected.items():
        assert float(lr(step)) == pytest.approx(want, rel=1e-5, abs=1e-12), step


def test_constant_schedule_and_bad_values():
    lr = opt.learning_rate_fn(_config(num_steps=5, lr=1e-3, warmup_steps=10))
    assert [float(lr(s)) for s in (0, 5, 10, 1000)] == pytest.approx([0, 5e-4, 1e-3, 1e-3])
    with pytest.raises(ValueError, match="optimizer.warmup_steps"):
        opt.learning_rate_fn(_config(num_steps=10, warmup_steps=10, schedule="cosine"))
    with pytest.raises(ValueError, match="optimizer.schedule"):
        opt.learning_rate_fn(_config(schedule="linear"))


# ---------------------------------------------------------------- clipping


@LAYOUTS
def test_clipping_rescales_the_global_norm_before_adam(layout):
    """Two steps against a NumPy Adam fed the clipped gradients (Adam alone is scale-free)."""
    params = {"a": jnp.ones((3, 4)), "b": jnp.zeros((5,))}
    rng = np.random.default_rng(1)
    g1 = {"a": rng.standard_normal((3, 4)) * 50, "b": rng.standard_normal(5) * 50}
    g2 = {"a": rng.standard_normal((3, 4)) * 0.01, "b": rng.standard_normal(5) * 0.01}
    cfg = _config(clip_norm=1.0, b1=0.9, b2=0.99, layout=layout)
    got = _run(opt.make_optimizer(cfg, params), params,
               [jax.tree_util.tree_map(jnp.asarray, g) for g in (g1, g2)])[-1]

    def flat(g):
        return np.concatenate([np.ravel(g["a"]), g["b"]])
    m = v = 0.0
    p = flat(jax.tree_util.tree_map(np.asarray, params)).astype(np.float64)
    for t, g in enumerate((flat(g1), flat(g2)), start=1):
        g = g * min(1.0, 1.0 / np.linalg.norm(g))
        m, v = 0.9 * m + 0.1 * g, 0.99 * v + 0.01 * g * g
        p = p - 1e-2 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.99 ** t)) + 1e-8)
    assert _rel(flat(got), p) < 1e-6
    unclipped = _run(opt.make_optimizer(_config(b1=0.9, b2=0.99, layout=layout), params), params,
                     [jax.tree_util.tree_map(jnp.asarray, g) for g in (g1, g2)])[-1]
    assert _rel(flat(unclipped), p) > 1e-3  # the clip changed the result


# ---------------------------------------------------------------- freezing


@LAYOUTS
def test_frozen_paths_get_zero_updates_and_no_state(vit_tree, layout):
    cfg = _config(freeze=["^depth/pretrained/"], weight_decay=0.1, clip_norm=1.0,
                  layer_decay=0.5, accumulate_steps=2, layout=layout)
    tx = opt.make_optimizer(cfg, vit_tree)
    rng = np.random.default_rng(5)
    grads = [jax.tree_util.tree_map(lambda x: jnp.asarray(rng.standard_normal(x.shape),
                                                          jnp.float32), vit_tree)
             for _ in range(6)]
    final = _run(tx, vit_tree, grads)[-1]
    frozen = opt.frozen_mask(vit_tree, cfg.optimizer.freeze)
    changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), final, vit_tree)
    flat_f = jax.tree_util.tree_leaves(frozen)
    flat_c = jax.tree_util.tree_leaves(changed)
    assert sum(flat_f) == len(jax.tree_util.tree_leaves(vit_tree["depth"]["pretrained"]))
    assert all(not c for f, c in zip(flat_f, flat_c) if f)  # exactly zero update
    assert all(c for f, c in zip(flat_f, flat_c) if not f)
    # State: Adam mu + nu + the MultiSteps accumulator for trainable leaves only.
    trainable = sum(x.size for x, f in zip(jax.tree_util.tree_leaves(vit_tree), flat_f) if not f)
    state_size = sum(x.size for x in jax.tree_util.tree_leaves(jax.eval_shape(tx.init, vit_tree))
                     if x.ndim > 0)
    assert state_size == 3 * trainable


def test_freeze_errors_name_the_key(vit_tree):
    with pytest.raises(ValueError, match="optimizer.freeze.*matches no parameter"):
        opt.make_optimizer(_config(freeze=["^encoder/"]), vit_tree)
    with pytest.raises(ValueError, match="optimizer.freeze.*not a regex"):
        opt.make_optimizer(_config(freeze=["blocks_(["]), vit_tree)


# ---------------------------------------------------------------- layer-wise lr decay


@LAYOUTS
def test_layer_decay_scales_first_adam_step(vit_tree, layout):
    """Constant gradients make Adam's first step exactly lr * 1 / (1 + eps) per element."""
    d, lr, n = 0.7, 1e-2, 4
    tx = opt.make_optimizer(_config(lr=lr, layer_decay=d, layout=layout), vit_tree)
    ones = jax.tree_util.tree_map(jnp.ones_like, vit_tree)
    updates, _ = jax.jit(tx.update)(ones, jax.jit(tx.init)(vit_tree), vit_tree)
    embed = ("patch_embed", "pos_embed", "cls_token", "mask_token", "register_tokens")
    for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]:
        name = opt.path_str(path)
        if name.startswith("depth/pretrained/blocks_"):
            scale = d ** (n - int(name.split("/")[2].split("_")[1]))
        elif name.split("/")[2] in embed and name.startswith("depth/pretrained/"):
            scale = d ** (n + 1)
        else:
            scale = 1.0  # ViT final norm, DPT, decoder, stem
        np.testing.assert_allclose(np.asarray(u), -lr * scale / (1 + 1e-8), rtol=1e-6,
                                   err_msg=name)
    # Block ratio: consecutive blocks differ by exactly d.
    b = updates["depth"]["pretrained"]
    ratio = b["blocks_0"]["ls1"]["gamma"] / b["blocks_1"]["ls1"]["gamma"]
    np.testing.assert_allclose(np.asarray(ratio), d, rtol=1e-6)


def test_block_count_comes_from_the_tree(radblur_tiny_params):
    from radblur_jax.models.configs import radblur_config
    assert opt.num_vit_blocks(radblur_tiny_params) == radblur_config("tiny").encoder.depth
    bare = {"pretrained": {f"blocks_{i}": {"w": 0} for i in range(7)}, "depth_head": {"w": 0}}
    assert opt.num_vit_blocks(bare) == 7  # a DepthAnything tree (stage A) without depth/
    assert opt.layer_lr_scale("pretrained/blocks_6/w", 7, 0.5) == 0.5
    assert opt.layer_lr_scale("pretrained/cls_token", 7, 0.5) == 0.5 ** 8
    assert opt.layer_lr_scale("depth_head/w", 7, 0.5) == 1.0


# ---------------------------------------------------------------- weight decay mask


@LAYOUTS
def test_weight_decay_touches_exactly_the_kernels(radblur_tiny_params, layout):
    """Zero gradients: Adam's update is 0, so only decayed leaves move, by -lr * wd * param."""
    params = radblur_tiny_params
    lr, wd = 0.5, 0.1
    tx = opt.make_optimizer(_config(lr=lr, weight_decay=wd, layout=layout), params)
    zeros = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, np.float32), params)
    updates, _ = jax.jit(tx.update)(zeros, jax.jit(tx.init)(params), params)
    moved = _paths_where(jax.tree_util.tree_map(lambda u: np.any(np.asarray(u) != 0), updates))
    all_paths = {opt.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    kernels = {p for p in all_paths if p.endswith("/kernel")}
    assert moved == kernels == _paths_where(opt.weight_decay_mask(params))
    for exempt in ("depth/pretrained/pos_embed", "depth/pretrained/cls_token",
                   "depth/pretrained/mask_token", "depth/pretrained/blocks_0/ls1/gamma",
                   "depth/pretrained/norm/scale", "depth/pretrained/blocks_2/attn/qkv/bias",
                   "decoder/sub_decoders/alpha_0", "decoder/sub_decoders/ada_0/scale",
                   "decoder/sub_decoders/blocks_1/beta", "stem/scale0_block0/gamma"):
        assert exempt in all_paths and exempt not in moved, exempt
    u = updates["depth"]["pretrained"]["blocks_1"]["attn"]["qkv"]["kernel"]
    p = params["depth"]["pretrained"]["blocks_1"]["attn"]["qkv"]["kernel"]
    assert _rel(u, -lr * wd * p) < 1e-6


# ---------------------------------------------------------------- accumulation


@LAYOUTS
def test_multisteps_equals_one_step_on_the_mean_gradient(vit_tree, layout):
    k = 3
    over = dict(weight_decay=0.05, clip_norm=0.5, layer_decay=0.8, schedule="cosine",
                layout=layout)
    rng = np.random.default_rng(3)
    grads = [jax.tree_util.tree_map(lambda x: jnp.asarray(rng.standard_normal(x.shape),
                                                          jnp.float32), vit_tree)
             for _ in range(k)]
    mean = jax.tree_util.tree_map(lambda *g: sum(g) / k, *grads)
    flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(t)])

    def updates(cfg, seq):
        tx = opt.make_optimizer(cfg, vit_tree)
        state, update, out = jax.jit(tx.init)(vit_tree), jax.jit(tx.update), []
        for g in seq:  # params fixed: the first k micro-steps only see params as they start
            u, state = update(g, state, vit_tree)
            out.append(flat(u))
        return out

    acc = updates(_config(accumulate_steps=k, **over), grads)
    one = updates(_config(**over), [mean])[0]
    for micro in acc[:-1]:  # no update before the k-th micro-step
        assert not np.any(micro)
    assert _rel(acc[-1], one) <= 1e-6


def test_accumulated_updates_follow_the_loop_step_schedule():
    """With ones as gradients each Adam step is lr(step) exactly; group j uses lr(j * k)."""
    k, params = 2, {"w": jnp.zeros((3,))}
    cfg = _config(num_steps=8, lr=1e-2, warmup_steps=2, schedule="cosine", min_lr_ratio=0.0,
                  accumulate_steps=k)
    ones = {"w": jnp.ones((3,))}
    traj = [np.asarray(p["w"][0]) for p in _run(opt.make_optimizer(cfg, params), params,
                                                  [ones] * 8)]
    lr = opt.learning_rate_fn(cfg)
    steps = np.diff(np.concatenate([[0.0], traj]))[k - 1::k]
    want = [-float(lr(j * k)) / (1 + 1e-8) for j in range(4)]
    np.testing.assert_allclose(steps, want, rtol=1e-5, atol=1e-9)
    assert steps[1] != 0 and steps[1] != steps[2]


# ---------------------------------------------------------------- layouts


def test_flat_moments_follow_the_per_leaf_chain(vit_tree):
    """Six steps with every knob on (clip that triggers, decay, layer decay, warmup + cosine,
    a frozen subtree, accumulation): the flat layout's trajectory is the per-leaf chain's."""
    over = dict(weight_decay=0.05, clip_norm=0.5, layer_decay=0.8, schedule="cosine",
                warmup_steps=2, freeze=["^stem/"], accumulate_steps=2)
    rng = np.random.default_rng(7)
    grads = [jax.tree_util.tree_map(lambda x: jnp.asarray(3 * rng.standard_normal(x.shape),
                                                          jnp.float32), vit_tree)
             for _ in range(8)]
    flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(t)])
    start = flat(vit_tree)
    got, want = (_run(opt.make_optimizer(_config(layout=layout, **over), vit_tree), vit_tree,
                      grads) for layout in ("flat", "per_leaf"))
    for step, (a, b) in enumerate(zip(got, want)):
        if step >= 3:  # lr is 0 at step 0; the first update lands after two micro-steps
            assert _rel(flat(a) - start, flat(b) - start) <= 1e-5, step
    np.testing.assert_array_equal(got[-1]["stem"]["intro"]["kernel"],
                                  vit_tree["stem"]["intro"]["kernel"])
    state = jax.eval_shape(opt.make_optimizer(_config(layout="flat", **over), vit_tree).init,
                           vit_tree)
    moments = [x for x in jax.tree_util.tree_leaves(state) if x.ndim == 1 and x.size > 100]
    trainable = flat(vit_tree).size - flat(vit_tree["stem"]).size
    assert [x.shape for x in moments] == [(trainable,)] * 2  # mu, nu: one vector each


def test_recipes_pick_the_layout_by_parameter_sharding():
    from train_helpers import load_config
    for preset, layout in (("tiny", "flat"), ("s", "flat"), ("l", "per_leaf")):
        cfg = load_config("deblur.py", preset)
        assert (cfg.optimizer.layout, cfg.mesh.fsdp > 1) == (layout, layout == "per_leaf")
    with pytest.raises(ValueError, match="optimizer.layout"):
        opt.make_optimizer(_config(layout="flattened"), {"w": jnp.zeros(3)})


# ---------------------------------------------------------------- EMA


def test_ema_update():
    ema = {"a": jnp.full((2, 3), 2.0), "b": {"c": jnp.arange(4.0)}}
    new = {"a": jnp.full((2, 3), 4.0), "b": {"c": -jnp.arange(4.0)}}
    copied = opt.ema_update(ema, new, 0.0)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(copied),
                                                     jax.tree_util.tree_leaves(new)))
    out = jax.jit(opt.ema_update)(ema, new, jnp.float32(0.75))
    np.testing.assert_allclose(out["a"], 0.75 * 2 + 0.25 * 4, rtol=1e-7)
    np.testing.assert_allclose(out["b"]["c"], 0.5 * np.arange(4.0), rtol=1e-7)
    assert out["a"].dtype == jnp.float32
    assert np.array_equal(jax.jit(opt.ema_update)(ema, new, 1.0)["a"], ema["a"])


@LAYOUTS
def test_a_fresh_state_can_be_donated(vit_tree, layout):
    """Built outside jit, the state holds no buffer twice (a donated step would refuse it)."""
    cfg = _config(weight_decay=0.1, clip_norm=1.0, layout=layout)
    tx = opt.make_optimizer(cfg, vit_tree)
    state = tx.init(vit_tree)
    buffers = [x.unsafe_buffer_pointer() for x in jax.tree_util.tree_leaves(state)]
    assert len(set(buffers)) == len(buffers)
    update = jax.jit(tx.update, donate_argnums=(1,))
    update(jax.tree_util.tree_map(jnp.ones_like, vit_tree), state, vit_tree)


# ---------------------------------------------------------------- EMA


@pytest.mark.parametrize("k", [1, 3])
def test_ema_moves_once_per_update_with_accumulation(k):
    """`steps.apply_gradients`: the EMA moves when the params do, once every k loop steps with
    accumulation, so after n updates it is `decay**n`-weighted whatever k is."""
    from radblur_jax.train import state as state_lib
    from radblur_jax.train import steps

    decay, params = 0.5, {"w": jnp.zeros((3,))}
    cfg = _config(num_steps=12, lr=1e-2, accumulate_steps=k)
    optimizers = state_lib.Optimizers(opt.make_optimizer(cfg, params), None,
                                      opt.learning_rate_fn(cfg))
    st = state_lib.create_state(params, optimizers, jax.random.key(0))
    step = jax.jit(lambda s, g: steps.apply_gradients(
        s, g, optimizers=optimizers, ema_decay=decay, accumulate_steps=k)[0])
    want_ema, ema_moves = np.zeros(3), 0
    for i in range(4 * k):
        before = np.asarray(st.params["w"])
        st = step(st, {"w": jnp.ones((3,))})
        after = np.asarray(st.params["w"])
        if (i + 1) % k == 0:
            assert np.all(after != before), i  # the update lands here ...
            want_ema, ema_moves = decay * want_ema + (1 - decay) * after, ema_moves + 1
        else:
            np.testing.assert_array_equal(after, before)  # ... and only here
        np.testing.assert_allclose(np.asarray(st.ema_params["w"]), want_ema, rtol=1e-6)
    assert ema_moves == 4
