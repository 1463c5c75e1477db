"""Backends: the module factories the network builds its convolutions and LayerNorms from.

The model files (blocks, decoder, ADA, DPT, ViT patch embedding) never ask which backend they
run on: every module takes a `Backend` (as flax's `examples/imagenet` takes `conv: ModuleDef`)
and calls its factories. The backend is resolved ONCE, where the model is built
(`radblur.build_radblur`, `depth_anything.build_depth_anything`), from the config's one
`conv_impl` field; a module constructed without one computes with `LAX`.

- `FAST`: matmul / shifted-add convolutions and closed-form depthwise and LayerNorm VJPs
  (models/conv_ops.py, models/norms.py). XLA:CPU lowers some convolutions and their gradients
  (depthwise, 1x1, the decoder head inside the reversible scan) far slower than these forms.
- `LAX`: the accelerator formulation: `lax.conv_general_dilated` (1x1 convs as matmuls),
  flax's LayerNorm formula with a closed-form VJP, the FFT branch's spectrum channels-first
  (`spectral_channels_first`): what cuDNN and the TPU compilers are built for, with no
  full-resolution copy that only transposes.

`stripe_rows` (forward-only passes, `inference_backend`): the NAF blocks run over bands of
that many rows so their intermediates stay in cache (models/striped.py).

Both compute the same function with the same parameters (names, shapes, init). Another form (a
Pallas kernel, a TPU layout) is one more `Backend` and one more name in `BACKENDS`.

The factories (keyword arguments as `flax.linen.Conv`):
  conv(features, kernel_size, *, strides=1, padding="SAME", feature_group_count=1,
       use_bias=True, kernel_init, dtype=None, gate=False, name=None)
      params `kernel (kh, kw, I/groups, O)`, `bias (O,)`. Called on an array or a tuple of
      channel pieces (their concatenation); `gate=True` returns NAFNet's SimpleGate of the
      output (the product of its two channel halves).
  conv_transpose(features, kernel_size, stride, *, dtype, name=None)
      torch `ConvTranspose2d` with kernel == stride; params `kernel (k, k, I, O)`, `bias (O,)`.
  norm(*, epsilon=1e-6, name=None)
      LayerNorm over channels in float32, params `scale`, `bias (C,)`.
And one function: `sum_rows(x (..., C)) -> (C,)`, the sum over every axis but the channels
(the decoder's per-channel gradients): halving folds on the CPU, one reduction elsewhere.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import jax

from radblur_jax.models import conv_modules, conv_ops, norms
from radblur_jax.models.configs import CONV_IMPLS

ModuleDef = Callable[..., nn.Module]


@dataclasses.dataclass(frozen=True)
class Backend:
    """How the network computes its convolutions and channel LayerNorms (factories above)."""
    name: str
    conv: ModuleDef
    conv_transpose: ModuleDef
    norm: ModuleDef
    sum_rows: Callable[[jax.Array], jax.Array]
    spectral_channels_first: bool = False
    stripe_rows: int = 0


def _backend(impl: str) -> Backend:
    return Backend(name=impl,
                   conv=functools.partial(conv_modules.Conv, impl=impl),
                   conv_transpose=functools.partial(conv_modules.ConvTranspose, impl=impl),
                   norm=functools.partial(norms.LayerNorm, impl=impl),
                   sum_rows=conv_ops.sum_rows if impl == "fast" else conv_ops.reduce_rows,
                   spectral_channels_first=impl == "lax")


FAST = _backend("fast")
LAX = _backend("lax")
BACKENDS = {"fast": FAST, "lax": LAX}


# Rows per band of the striped NAF blocks in forward-only passes on CPU (models/striped.py):
# a band's intermediates at the decoder's widths stay in cache.
INFERENCE_STRIPE_ROWS = 24


def inference_backend(backend: Backend) -> Backend:
    """The backend for forward-only passes (inference; no gradients): `FAST` runs the NAF
    blocks over bands of rows (`stripe_rows`) and the FFT branch's spectrum channels-first
    (fewer transposes around the transforms), the same function with less memory traffic;
    other backends unchanged."""
    if backend.name == "fast" and not backend.stripe_rows:
        return dataclasses.replace(backend, stripe_rows=INFERENCE_STRIPE_ROWS,
                                   spectral_channels_first=True)
    return backend


def resolve_backend(conv_impl: str = "auto") -> Backend:
    """The backend for a config's `conv_impl`: "fast", "lax", or "auto" (FAST on the CPU
    backend, LAX elsewhere). ValueError for any other value."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"config conv_impl={conv_impl!r}: expected one of "
                         f"{', '.join(CONV_IMPLS)}")
    if conv_impl == "auto":
        return FAST if jax.default_backend() == "cpu" else LAX
    return BACKENDS[conv_impl]
