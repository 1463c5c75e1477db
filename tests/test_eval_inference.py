"""eval.inference: sliding windows, self-ensemble, batch padding and sharding.

Most checks use small stand-in models whose outputs are known exactly (a pointwise model must
give the same result with or without windows); one slow test runs RADBlur-tiny.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err

from radblur_jax.eval import inference as inf


class _Out(NamedTuple):
    restored: jax.Array
    disparity: jax.Array


class _Depth(NamedTuple):
    disparity: jax.Array


class PointwiseModel:
    """Stand-in with the RADBlur apply interface: restored = 2x - 0.3 (per pixel),
    disparity = channel mean."""

    def restore(self, x):
        return 2.0 * x - 0.3

    def apply(self, variables, x, num_active=None, method=None):
        disp = jnp.mean(x, axis=-1) * variables["params"]["w"]
        if method == "encode":
            return None, _Depth(disp), None
        return _Out(self.restore(x)[None], disp)


class RampModel(PointwiseModel):
    """Not rotation-equivariant: adds the column index / 100."""

    def restore(self, x):
        return x + jnp.arange(x.shape[2], dtype=jnp.float32)[None, None, :, None] / 100.0


PARAMS = {"w": jnp.float32(1.0)}


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(np.random.default_rng(0).random((2, 37, 53, 3)), jnp.float32)


def test_window_starts_cover_and_end_flush():
    for size, tile, overlap in ((53, 16, 6), (37, 16, 6), (100, 32, 8), (16, 16, 4), (9, 16, 4)):
        starts = inf.window_starts(size, tile, overlap)
        t = min(tile, size)
        assert starts[0] == 0 and starts[-1] == size - t
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s:s + t] = True
        assert covered.all()


def test_blend_ramp():
    w = inf.blend_ramp(16, 4)
    np.testing.assert_allclose(w[:4], [0.125, 0.375, 0.625, 0.875])
    np.testing.assert_allclose(w[4:12], 1.0)
    np.testing.assert_allclose(w[::-1], w)


def test_windows_equal_full_image_for_a_pointwise_model(images):
    model = PointwiseModel()
    full = jax.jit(inf.restore_fn(model))(PARAMS, images)
    opts = inf.InferenceOptions(tile=16, overlap=6, tile_batch=3)
    tiled = jax.jit(inf.restore_fn(model, opts))(PARAMS, images)
    assert tiled[0].shape == (2, 37, 53, 3) and tiled[1].shape == (2, 37, 53)
    assert rel_err(tiled[0], full[0]) < 1e-6
    # Window-mode depth comes from one pass on the image resized to ~tile^2 pixels: on a smooth
    # image it is close to the full-resolution map.
    yy, xx = np.mgrid[0:37, 0:53] / 40.0
    smooth = np.stack([np.sin(yy + c) * np.cos(xx) * 0.4 + 0.5 for c in range(3)], -1)
    smooth = jnp.asarray(np.repeat(smooth[None], 2, 0), jnp.float32)
    d_full = jax.jit(inf.restore_fn(model))(PARAMS, smooth)[1]
    d_tiled = jax.jit(inf.restore_fn(model, opts))(PARAMS, smooth)[1]
    assert rel_err(d_tiled, d_full) < 0.02


def _blend_reference(restore, x: np.ndarray, tile: int, overlap: int) -> np.ndarray:
    """Window-mode output by its definition: each pixel the ramp-weighted mean of the windows'
    outputs (`restore` applied to each window) that cover it."""
    b, h, w, _ = x.shape
    ys, xs = inf.window_starts(h, tile, overlap), inf.window_starts(w, tile, overlap)
    th, tw = min(h, tile), min(w, tile)
    weight = np.outer(inf.blend_ramp(th, overlap if len(ys) > 1 else 0),
                      inf.blend_ramp(tw, overlap if len(xs) > 1 else 0))[None, :, :, None]
    acc, norm = np.zeros(x.shape), np.zeros(x.shape)
    for y in ys:
        for x0 in xs:
            out = np.asarray(restore(jnp.asarray(x[:, y:y + th, x0:x0 + tw])))
            acc[:, y:y + th, x0:x0 + tw] += out * weight
            norm[:, y:y + th, x0:x0 + tw] += weight
    return acc / norm


def test_windows_blend_as_defined_for_a_position_dependent_model(images):
    """RampModel's output depends on where a pixel sits in its window, so each window's
    contribution and weight shows; 4 x 5 windows in passes of 3 (the last pass is filled up
    with a repeated window that must not count twice)."""
    ramp = RampModel()
    x = np.asarray(images)
    for tile, overlap, tile_batch in ((16, 6, 3), (16, 0, 4), (40, 8, 2)):
        opts = inf.InferenceOptions(tile=tile, overlap=overlap, tile_batch=tile_batch)
        got = jax.jit(inf.restore_fn(ramp, opts))(PARAMS, images)[0]
        want = _blend_reference(ramp.restore, x, tile, overlap)
        assert rel_err(got, want) < 1e-6, (tile, overlap, tile_batch)
    assert rel_err(want, np.asarray(ramp.restore(images))) > 1e-3  # windows changed it


def test_window_program_does_not_grow_with_the_image():
    """The windows run in one loop: the same program for 6 windows or 150, and temporaries
    that grow with the image, not with the windows times their size."""
    fn = jax.jit(inf.restore_fn(PointwiseModel(), inf.InferenceOptions(tile=16, overlap=8)))

    def program(h, w):
        lowered = fn.lower(PARAMS, jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32))
        ops = re.findall(r"\b(?:stablehlo|func|call)\.?[a-z_]*", lowered.as_text())
        return ops, lowered.compile().memory_analysis().temp_size_in_bytes

    small_ops, _ = program(24, 40)
    large_ops, large_temp = program(88, 120)
    assert len(inf.window_starts(24, 16, 8)) * len(inf.window_starts(40, 16, 8)) == 2 * 4
    assert len(inf.window_starts(88, 16, 8)) * len(inf.window_starts(120, 16, 8)) == 10 * 14
    assert len(small_ops) > 20 and large_ops == small_ops
    windows_bytes = 10 * 14 * 16 * 16 * 3 * 4
    assert large_temp < windows_bytes / 2, large_temp


def test_self_ensemble(images):
    eq = jax.jit(inf.restore_fn(PointwiseModel(), inf.InferenceOptions(self_ensemble=True)))
    plain = jax.jit(inf.restore_fn(PointwiseModel()))
    assert rel_err(eq(PARAMS, images)[0], plain(PARAMS, images)[0]) < 1e-6
    ramp = RampModel()
    got = jax.jit(inf.restore_fn(ramp, inf.InferenceOptions(self_ensemble=True)))(PARAMS, images)[0]
    x = np.asarray(images)
    outs = []
    for k in range(8):
        t = np.rot90(x[:, :, ::-1] if k >= 4 else x, k % 4, axes=(1, 2))
        r = np.asarray(ramp.restore(jnp.asarray(t)))
        r = np.rot90(r, -(k % 4), axes=(1, 2))
        outs.append(r[:, :, ::-1] if k >= 4 else r)
    want = np.mean(outs, axis=0)
    assert rel_err(got, want) < 1e-6
    assert rel_err(np.asarray(ramp.restore(images)), want) > 1e-3  # the ensemble changed it


def test_restorer_pads_the_batch(images):
    r = inf.Restorer(PointwiseModel(), PARAMS)
    restored, disp = r(np.asarray(images[:1]))
    assert restored.shape == (1, 37, 53, 3) and disp.shape == (1, 37, 53)
    np.testing.assert_allclose(restored, 2.0 * np.asarray(images[:1]) - 0.3, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        r(np.zeros((37, 53, 3), np.float32))


def test_restorer_lower_is_the_program_restore_runs(images):
    r = inf.Restorer(PointwiseModel(), PARAMS)
    x = np.asarray(images[:1])
    compiled = r.lower(x).compile()
    restored, disp, steps = compiled(r.params, x)
    want = r.restore(x)
    np.testing.assert_array_equal(np.asarray(restored), want.restored)
    np.testing.assert_array_equal(np.asarray(disp), want.disparity)
    np.testing.assert_array_equal(np.asarray(steps), want.steps)


def test_restorer_falls_back_to_windows_over_the_memory_limit(images):
    """With a memory limit a shape is restored whole while XLA's count of the whole-image
    program fits, else in windows of `fallback_tile` (told once per shape)."""
    x = np.asarray(images)
    ramp = RampModel()  # position-dependent: windows change its output
    whole = inf.Restorer(ramp, PARAMS).restore(x)
    windows = inf.Restorer(ramp, PARAMS, inf.InferenceOptions(tile=16, overlap=4)).restore(x)
    assert rel_err(windows.restored, whole.restored) > 1e-3
    need = inf.program_bytes(inf.Restorer(ramp, PARAMS).lower(x).compile())
    assert need >= 2 * x.nbytes  # the image in, the restored image out
    told: list[str] = []
    for limit, want in ((need, whole), (need - 1, windows)):
        r = inf.Restorer(ramp, PARAMS, inf.InferenceOptions(overlap=4), memory_limit=limit,
                         fallback_tile=16, on_fallback=told.append)
        for _ in range(2):
            got = r.restore(x)
            np.testing.assert_array_equal(got.restored, want.restored)
            np.testing.assert_array_equal(got.steps, want.steps)
        assert r.tile_for(x) == (0 if want is whole else 16)
    assert len(told) == 1, told
    assert told[0].startswith("images of 53 x 37 px (a batch of 2): restored whole they need")
    assert told[0].endswith(f"need {need / 2**20:.1f} MiB, over the limit of "
                            f"{(need - 1) / 2**20:.1f} MiB; restored in windows of 16 px")
    fixed = inf.Restorer(ramp, PARAMS, inf.InferenceOptions(tile=16, overlap=4), memory_limit=1)
    assert fixed.memory_limit is None and fixed.tile_for(x) == 16  # a fixed tile is kept


def test_restorer_takes_windows_above_a_pixel_count_without_a_whole_image_compile(images):
    x = np.asarray(images)  # 2 images of 37 x 53 px
    pixels = x.shape[1] * x.shape[2]
    told: list[str] = []
    r = inf.Restorer(RampModel(), PARAMS, inf.InferenceOptions(overlap=4), memory_limit=2**40,
                     fallback_tile=16, windows_above=pixels - 1, on_fallback=told.append)
    lowered: list[int] = []
    lower = r._lower
    r._lower = lambda tile, images: lowered.append(tile) or lower(tile, images)
    windows = inf.Restorer(RampModel(), PARAMS, inf.InferenceOptions(tile=16, overlap=4))
    np.testing.assert_array_equal(r.restore(x).restored, windows.restore(x).restored)
    assert lowered == [16]  # the windows' program only
    assert told == ["images of 53 x 37 px (a batch of 2): over 0.00196 MP; restored in "
                    "windows of 16 px"]
    small = x[:, :20, :30]  # 600 px: whole, after the memory check
    assert r.tile_for(small) == 0 and lowered == [16, 0] and len(told) == 1
    assert inf.Restorer(RampModel(), PARAMS, windows_above=1).windows_above is None  # no limit


def test_available_memory():
    assert inf.available_memory() > 0  # this host's MemAvailable

    class Accelerator:
        platform = "gpu"

        def __init__(self, stats):
            self.stats = stats

        def memory_stats(self):
            return self.stats

    assert inf.available_memory(Accelerator({"bytes_limit": 80 * 2**30})) == 80 * 2**30
    assert inf.available_memory(Accelerator(None)) is None  # a backend without statistics


def test_options_validate():
    with pytest.raises(ValueError, match="overlap"):
        inf.InferenceOptions(tile=16, overlap=16)


_SHARDED = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=3"
    sys.path.insert(0, sys.argv[1])
    import jax, numpy as np
    import test_eval_inference as t
    from radblur_jax.eval.inference import Restorer, InferenceOptions
    assert jax.device_count() == 3
    x = np.random.default_rng(1).random((4, 21, 30, 3)).astype(np.float32)
    for opts, limit in ((InferenceOptions(), None), (InferenceOptions(tile=16, overlap=4), None),
                        (InferenceOptions(overlap=4), 1)):  # falls back to windows of 16 px
        r = Restorer(t.PointwiseModel(), t.PARAMS, opts, memory_limit=limit, fallback_tile=16)
        out, disp = r(x)
        assert out.shape == (4, 21, 30, 3), out.shape
        assert np.abs(out - (2 * x - 0.3)).max() < 1e-5
        padded = np.concatenate([x, x[:2]])
        assert r.tile_for(padded) == (16 if limit else opts.tile)
        assert len(r.lower(padded).compile().output_shardings[0].device_set) == 3
    print("ok")
""")


def test_restorer_shards_over_devices():
    here = os.path.dirname(__file__)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(here), here])}
    res = subprocess.run([sys.executable, "-c", _SHARDED, here], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("ok")


@pytest.mark.slow
def test_radblur_tiny_windows_run():
    from radblur_jax.eval.loading import load_random
    loaded = load_random("tiny")
    x = np.random.default_rng(2).random((1, 40, 60, 3)).astype(np.float32)
    full = inf.Restorer(loaded.model, loaded.params)(x)
    tiled = inf.Restorer(loaded.model, loaded.params,
                         inf.InferenceOptions(tile=32, overlap=8, tile_batch=2))(x)
    for a, b in zip(full, tiled):
        assert a.shape == b.shape and np.all(np.isfinite(b))
    assert rel_err(tiled[0], full[0]) < 1.0  # same model, windows see less context


class StepsModel(PointwiseModel):
    """Adaptive stand-in: a window asks for 2 steps when its mean is above 0.5, else 1; the
    output is the input + steps."""

    def apply(self, variables, x, num_active=None, method=None):
        if method != "adaptive":
            return super().apply(variables, x, num_active, method)
        steps = jnp.where(jnp.mean(x, axis=(1, 2, 3)) > 0.5, 2, 1).astype(jnp.int32)
        out = super().apply(variables, x)
        return _Adaptive(x + steps[:, None, None, None], out.disparity, steps)


class _Adaptive(NamedTuple):
    restored: jax.Array
    disparity: jax.Array
    steps: jax.Array


def test_adaptive_windows_pick_their_own_steps():
    x = np.full((1, 20, 40, 3), 0.2, np.float32)
    x[:, :, 28:] = 0.9  # only the right-hand windows are mostly bright: they ask for 2
    opts = inf.InferenceOptions(tile=16, overlap=0, tile_batch=3, adaptive=True)
    out = inf.Restorer(StepsModel(), PARAMS, opts).restore(x)
    starts = inf.window_starts(40, 16, 0), inf.window_starts(20, 16, 0)
    assert starts == ([0, 16, 24], [0, 4])
    # windows in row-major order: 2 rows x 3 columns; the 3rd column (x >= 24) is bright
    assert out.steps.tolist() == [[1, 1, 2, 1, 1, 2]]
    np.testing.assert_allclose(out.restored[0, :, :16], x[0, :, :16] + 1, atol=1e-6)
    np.testing.assert_allclose(out.restored[0, :, 32:], x[0, :, 32:] + 2, atol=1e-6)
    whole = inf.Restorer(StepsModel(), PARAMS, inf.InferenceOptions(adaptive=True)).restore(x)
    assert whole.steps.tolist() == [[1]]
    plain = inf.InferenceOptions(tile=16, overlap=0)
    fixed = inf.Restorer(PointwiseModel(), PARAMS, plain).restore(x)
    assert fixed.steps.tolist() == [[1] * 6]  # fixed depth: every window ran all (here 1)
    with pytest.raises(ValueError, match="num_active"):
        inf.InferenceOptions(adaptive=True, num_active=2)


def test_window_mode_depth_is_registered_with_vit_input_resize():
    """With vit_input="resize" the encoder's disparity covers the whole padded image at the
    ViT's size. Window mode's depth pass (here at full size: sqrt(40 * 200) < tile) must map
    it as the model's forward does, giving the full-image disparity, not a misregistered crop."""
    from radblur_jax.eval.loading import sampled_params
    from radblur_jax.models.configs import radblur_config
    from radblur_jax.models.radblur import build_radblur

    cfg = radblur_config("tiny")
    cfg.vit_input = "resize"
    model = build_radblur(cfg)
    params = sampled_params(model, 0)
    yy, xx = np.mgrid[0:40, 0:200]
    x = np.stack([0.5 + 0.4 * np.sin(xx / (7.0 + 3 * c) + yy / 5.0) for c in range(3)], -1)
    x = jnp.asarray(x[None], jnp.float32)
    full = jax.jit(lambda p, v: model.apply({"params": p}, v, num_active=1).disparity)(params, x)
    opts = inf.InferenceOptions(tile=100, overlap=8, tile_batch=4, num_active=1)
    tiled = jax.jit(inf.restore_fn(model, opts))(params, x)[1]
    assert tiled.shape == full.shape == (1, 40, 200)
    assert float(jnp.std(full)) > 1e-3  # a map with structure to misregister
    assert rel_err(tiled, full) < 1e-4
