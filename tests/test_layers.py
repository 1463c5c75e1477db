"""PyTorch parity of the resampling and convolution helpers in `radblur_jax.models.layers`."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from conftest import rel_err, to_nchw, to_nhwc  # noqa: E402

from radblur_jax.models import layers  # noqa: E402

TOL = 2e-6


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, 11, 17, 5)).astype(np.float32)


@pytest.mark.parametrize("size", [(37, 37), (16, 22), (9, 13), (5, 3), (11, 17), (23, 40)])
@pytest.mark.parametrize("antialias", [False, True])
def test_bicubic_size(image, size, antialias):
    got = layers.bicubic_resize(jnp.asarray(image), size=size, antialias=antialias)
    ref = F.interpolate(to_nchw(image), size=size, mode="bicubic", align_corners=False,
                        antialias=antialias)
    assert rel_err(got, to_nhwc(ref)) <= TOL


@pytest.mark.parametrize("factor", [((16 + 0.1) / 11, (22 + 0.1) / 17),
                                    ((9 + 0.1) / 11, (13 + 0.1) / 17), (2.0, 0.5)])
@pytest.mark.parametrize("antialias", [False, True])
def test_bicubic_scale_factor(image, factor, antialias):
    got = layers.bicubic_resize(jnp.asarray(image), scale_factor=factor, antialias=antialias)
    ref = F.interpolate(to_nchw(image), scale_factor=factor, mode="bicubic",
                        align_corners=False, antialias=antialias)
    assert got.shape == to_nhwc(ref).shape
    assert rel_err(got, to_nhwc(ref)) <= TOL


def test_offset_scale_factor_differs_from_size():
    """Guards against silently using in/out sizes for scale_factor resizes."""
    x = np.random.default_rng(1).standard_normal((1, 37, 37, 3)).astype(np.float32)
    a = layers.bicubic_resize(jnp.asarray(x), scale_factor=(16.1 / 37, 22.1 / 37))
    b = layers.bicubic_resize(jnp.asarray(x), size=(16, 22))
    assert a.shape == b.shape and rel_err(a, b) > 1e-3


# Depth Anything's sizes: the DPT upsamples 37x49 token grids to 518x686 (bilinear, corners
# aligned) and resizes the depth map back to the photo; the pos-embed's bicubic upsamples too.
# Over hundreds of output pixels, float64 source coordinates drift from ATen's float32 ones.
LARGE = [((37, 49), (518, 686)), ((259, 343), (518, 686)), ((518, 686), (480, 640))]


@pytest.mark.parametrize("sizes", LARGE)
@pytest.mark.parametrize("mode", ["bilinear_corners", "bilinear", "bicubic", "bicubic_aa",
                                  "bicubic_scale_factor"])
def test_large_resizes_compute_coordinates_as_aten(sizes, mode):
    (h, w), (oh, ow) = sizes
    x = np.random.default_rng(2).standard_normal((1, h, w, 3)).astype(np.float32)
    factor = ((oh + 0.1) / h, (ow + 0.1) / w)
    if mode.startswith("bilinear"):
        corners = mode == "bilinear_corners"
        got = layers.bilinear_resize(jnp.asarray(x), (oh, ow), align_corners=corners)
        ref = F.interpolate(to_nchw(x), size=(oh, ow), mode="bilinear", align_corners=corners)
        bound = 2e-7
    else:
        kw = dict(scale_factor=factor) if mode == "bicubic_scale_factor" else dict(size=(oh, ow))
        aa = mode == "bicubic_aa"
        got = layers.bicubic_resize(jnp.asarray(x), antialias=aa, **kw)
        ref = F.interpolate(to_nchw(x), mode="bicubic", align_corners=False, antialias=aa, **kw)
        bound = 1e-6
    assert rel_err(got, to_nhwc(ref)) <= bound


@pytest.mark.parametrize("size", [(22, 34), (7, 9), (11, 17), (1, 4)])
@pytest.mark.parametrize("align_corners", [True, False])
def test_bilinear(image, size, align_corners):
    got = layers.bilinear_resize(jnp.asarray(image), size, align_corners=align_corners)
    ref = F.interpolate(to_nchw(image), size=size, mode="bilinear", align_corners=align_corners)
    assert rel_err(got, to_nhwc(ref)) <= TOL


@pytest.mark.parametrize("size,antialias", [((23, 40), False), ((16, 22), True),
                                             ((5, 3), True)])
def test_bicubic_gradient(image, size, antialias):
    """The resize's custom gradient (the transposed matrices, applied as gathers where they
    are sparse) equals torch's backward through `interpolate`."""
    g = np.random.default_rng(2).standard_normal((2, *size, 5)).astype(np.float32)
    _, vjp = jax.vjp(lambda x: layers.bicubic_resize(x, size=size, antialias=antialias),
                     jnp.asarray(image))
    got = vjp(jnp.asarray(g))[0]
    x = to_nchw(image).requires_grad_(True)
    F.interpolate(x, size=size, mode="bicubic", align_corners=False,
                  antialias=antialias).backward(to_nchw(g))
    assert rel_err(got, to_nhwc(x.grad)) <= TOL


def test_region_resize_matches_matmul():
    """The gathered taps give the dense matrices' product, value and gradient, and keep a
    bfloat16 input's dtype."""
    rng = np.random.default_rng(3)
    mat_h = layers.region_bilinear_matrix(9, 16, 1.75, 1.0)
    mat_w = layers.region_bilinear_matrix(13, 23, 1.75, 1.0)
    x = rng.standard_normal((2, 9, 13, 4)).astype(np.float32)
    g = rng.standard_normal((2, 16, 23, 4)).astype(np.float32)
    y, vjp = jax.vjp(lambda a: layers.apply_separable(a, mat_h, mat_w), jnp.asarray(x))
    want = np.einsum("oh,wv,bhvc->bowc", mat_h, mat_w, x)
    want_grad = np.einsum("oh,wv,bowc->bhvc", mat_h, mat_w, g)
    assert rel_err(y, want) <= TOL and rel_err(vjp(jnp.asarray(g))[0], want_grad) <= TOL
    low = layers.apply_separable(jnp.asarray(x, jnp.bfloat16), mat_h, mat_w)
    assert low.dtype == jnp.bfloat16 and rel_err(low.astype(jnp.float32), want) <= 1e-2


def test_bilinear_scale2_align_corners(image):
    got = layers.bilinear_resize(jnp.asarray(image), (22, 34), align_corners=True)
    ref = F.interpolate(to_nchw(image), scale_factor=2, mode="bilinear", align_corners=True)
    assert rel_err(got, to_nhwc(ref)) <= TOL


@pytest.mark.parametrize("kernel,stride,padding", [(3, 2, 1), (3, 1, 1), (1, 1, 0), (14, 14, 0)])
def test_conv(kernel, stride, padding):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 28, 42, 4)).astype(np.float32)
    tconv = torch.nn.Conv2d(4, 6, kernel, stride, padding)
    module = layers.conv(6, kernel, stride, padding)
    params = {"kernel": jnp.asarray(tconv.weight.detach().numpy().transpose(2, 3, 1, 0)),
              "bias": jnp.asarray(tconv.bias.detach().numpy())}
    got = module.apply({"params": params}, jnp.asarray(x))
    ref = to_nhwc(tconv(to_nchw(x)))
    assert got.shape == ref.shape and rel_err(got, ref) <= TOL


@pytest.mark.parametrize("kernel,stride,padding", [(4, 4, 0), (2, 2, 0), (3, 2, 1), (3, 1, 0)])
def test_conv_transpose(kernel, stride, padding):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 7, 3)).astype(np.float32)
    tconv = torch.nn.ConvTranspose2d(3, 4, kernel, stride, padding)
    module = layers.ConvTranspose(4, kernel, stride, padding)
    params = {"kernel": jnp.asarray(tconv.weight.detach().numpy().transpose(2, 3, 0, 1)),
              "bias": jnp.asarray(tconv.bias.detach().numpy())}
    got = module.apply({"params": params}, jnp.asarray(x))
    ref = to_nhwc(tconv(to_nchw(x)))
    assert got.shape == ref.shape and rel_err(got, ref) <= TOL
