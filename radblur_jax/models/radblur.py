"""RADBlur: Depth Anything V2 (DINOv2 + DPT) + blur stem + reversible decoder with ADA.

`RADBlur(cfg)(blurry)` with `blurry (B, H, W, 3)` in [0, 1], any H and W, returns
`RADBlurOutput(restored (n, B, H, W, 3), disparity (B, H, W), exit_logits (B, classes))`, all
float32 whatever `cfg.dtype`. Padding happens inside: the blur stem sees the image reflect-padded
to a multiple of 16, the ViT that image padded (reflect) or resized to a multiple of the patch
size; outputs are cropped back to (H, W). `apply(..., method=RADBlur.adaptive)` is the adaptive
exit for inference: the encoder and exit logits once, then per image only the sub-decoders the
head asks for (`AdaptiveOutput`).

`build_radblur(cfg_or_name)` is the way to build it: it validates the config and resolves the
backend (models/backends.py) once from `cfg.conv_impl`.
"""
from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from radblur_jax.models import configs
from radblur_jax.models.backends import LAX, Backend, resolve_backend
from radblur_jax.models.decoder import NUM_LEVELS, BlurStem, ReversibleDecoder
from radblur_jax.models.depth_anything import IMAGENET_MEAN, IMAGENET_STD, DepthAnything
from radblur_jax.models.layers import (
    apply_separable,
    bicubic_resize,
    bilinear_resize,
    ceil_to,
    reflect_pad_to,
    region_bilinear_matrix,
)

STEM_MULTIPLE = 2 ** NUM_LEVELS  # the blur stem halves the image NUM_LEVELS times


class RADBlurOutput(NamedTuple):
    """restored `(n, B, H, W, 3)` (one image per sub-decoder run), disparity `(B, H, W)`,
    exit_logits `(B, len(psnr_edges) + 1)`."""
    restored: jax.Array
    disparity: jax.Array
    exit_logits: jax.Array


class AdaptiveOutput(NamedTuple):
    """`RADBlur.adaptive`: restored `(B, H, W, 3)` (each image after its own number of
    sub-decoders), disparity `(B, H, W)`, exit_logits `(B, classes)`, steps `(B,)` int32."""
    restored: jax.Array
    disparity: jax.Array
    exit_logits: jax.Array
    steps: jax.Array


def exit_depth(exit_class, num_sub_decoders: int, num_classes: int):
    """Sub-decoders to run for a blur class: `max(1, ceil(K (classes - c) / classes))` capped at
    K (class 0 = most blurred -> all K). Python ints or integer arrays (elementwise)."""
    k, c = num_sub_decoders, num_classes
    n = (k * (c - exit_class) + c - 1) // c  # integer ceil: no float rounding at the bin edges
    if isinstance(n, jax.Array):
        return jnp.clip(n, 1, k).astype(jnp.int32)
    return max(1, min(k, int(n)))


class ExitHead(nn.Module):
    """Blur-degree classifier on pooled ViT tokens `(B, h, w, D)` -> float32 logits `(B, classes)`.

    Gradients stop at the tokens: the exit loss trains only this head. Pooling and the norm run
    in float32, the dense layers in `dtype`.
    """
    num_classes: int
    hidden: int = 128
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = jax.lax.stop_gradient(jnp.mean(tokens.astype(jnp.float32), axis=(1, 2)))
        x = nn.LayerNorm(dtype=jnp.float32, name="norm")(x)
        x = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x), approximate=False)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc2")(x).astype(jnp.float32)


class RADBlur(nn.Module):
    """The assembled network; `cfg` from `configs.radblur_config` (validated in `setup`).

    `backend`: the convolutions' and LayerNorms' factories (`build_radblur` resolves it from
    `cfg.conv_impl`; a module constructed directly computes with `LAX`, like every module).
    """
    cfg: ml_collections.ConfigDict
    backend: Backend = LAX

    def setup(self) -> None:
        cfg = configs.validate_config(self.cfg)
        d, dtype = cfg.decoder, jnp.dtype(cfg.dtype)
        backend = self.backend
        self.depth = DepthAnything(cfg.encoder, cfg.dpt, backend)
        self.stem = BlurStem(width=d.width, blocks=d.stem_blocks,
                             remat=bool(d.get("stem_remat", False)), dtype=dtype, backend=backend)
        self.decoder = ReversibleDecoder(
            width=d.width, num_sub_decoders=d.num_sub_decoders, fft=d.fft,
            depth_attention=configs.uses_depth_attention(cfg), reversible=d.reversible,
            anchor_every=d.anchor_every, dw_expand=d.dw_expand, ffn_expand=d.ffn_expand,
            unroll=d.unroll, keep_last=bool(d.get("keep_last", False)), dtype=dtype,
            backend=backend)
        self.exit_head = ExitHead(len(cfg.exit.psnr_edges) + 1, cfg.exit.hidden, dtype)

    def _vit_input(self, padded: jax.Array) -> tuple[jax.Array, tuple[int, int]]:
        """ViT input from the stem-padded image, and the (H, W) image pixels it covers."""
        _, hs, ws, _ = padded.shape
        p = self.cfg.encoder.patch_size
        if self.cfg.vit_input == "pad":
            x = reflect_pad_to(padded, ceil_to(hs, p), ceil_to(ws, p))
            cover = (x.shape[1], x.shape[2])
        else:  # "resize" (validate_config admits nothing else)
            size = (max(p, round(hs / p) * p), max(p, round(ws / p) * p))
            x, cover = bicubic_resize(padded, size=size), (hs, ws)
        mean, std = jnp.asarray(IMAGENET_MEAN), jnp.asarray(IMAGENET_STD)
        return (x - mean) / std, cover

    def encode(self, blurry: jax.Array):
        """Runs the depth model; returns `(padded image, DepthOutput, covered (H, W))`."""
        _, h, w, _ = blurry.shape
        padded = reflect_pad_to(blurry.astype(jnp.float32), ceil_to(h, STEM_MULTIPLE),
                                ceil_to(w, STEM_MULTIPLE))
        vit_in, cover = self._vit_input(padded)
        return padded, self.depth(vit_in, return_features=True), cover

    def exit_logits(self, blurry: jax.Array) -> jax.Array:
        """Blur-degree logits `(B, classes)` for `blurry (B, H, W, 3)`."""
        return self.exit_head(self.encode(blurry)[1].tokens)

    def _decoder_inputs(self, blurry: jax.Array):
        """The encoder's work, shared by every decoding: `(padded, DepthOutput, stem states,
        bottleneck, depth features at the level sizes or None, disparity (B, H, W))`."""
        _, h, w, _ = blurry.shape
        padded, depth_out, cover = self.encode(blurry)
        states, bottleneck = self.stem(padded)
        depth_features = None
        if configs.uses_depth_attention(self.cfg):
            depth_features = []
            for feat, state in zip(depth_out.features, states):
                (_, fh, fw, _), (_, sh, sw, _) = feat.shape, state.shape
                step = padded.shape[1] // sh
                depth_features.append(apply_separable(
                    feat, region_bilinear_matrix(fh, sh, cover[0] / fh, step),
                    region_bilinear_matrix(fw, sw, cover[1] / fw, step)))
        disparity = depth_out.disparity
        if self.cfg.vit_input == "resize":
            disparity = bilinear_resize(disparity[..., None], padded.shape[1:3],
                                        align_corners=False)[..., 0]
        return padded, depth_out, states, bottleneck, depth_features, disparity[:, :h, :w]

    def __call__(self, blurry: jax.Array, num_active: int | None = None) -> RADBlurOutput:
        """`blurry (B, H, W, 3)` in [0, 1]; `num_active` runs only the first n sub-decoders."""
        _, h, w, _ = blurry.shape
        padded, depth_out, states, bottleneck, feats, disparity = self._decoder_inputs(blurry)
        restored = self.decoder(states, bottleneck, feats, padded, num_active)
        return RADBlurOutput(restored[:, :, :h, :w], disparity, self.exit_head(depth_out.tokens))

    def adaptive(self, blurry: jax.Array) -> AdaptiveOutput:
        """Adaptive exit: the encoder and the exit logits once, then per image only the
        `exit_depth` sub-decoders its logits ask for (the batch runs to its largest ask).

        `blurry (B, H, W, 3)` in [0, 1]; `restored (B, H, W, 3)` equals
        `__call__(blurry).restored[steps - 1]` per image.
        """
        _, h, w, _ = blurry.shape
        padded, depth_out, states, bottleneck, feats, disparity = self._decoder_inputs(blurry)
        logits = self.exit_head(depth_out.tokens)
        steps = exit_depth(jnp.argmax(logits, axis=-1), self.cfg.decoder.num_sub_decoders,
                           logits.shape[-1])
        restored = self.decoder(states, bottleneck, feats, padded, exit_steps=steps)
        return AdaptiveOutput(restored[:, :h, :w], disparity, logits, steps)


def build_radblur(config: ml_collections.ConfigDict | str) -> RADBlur:
    """The model for a config or a size name (tiny/s/b/l/g); the config is validated and the
    backend resolved from `cfg.conv_impl` here."""
    cfg = configs.validate_config(
        configs.radblur_config(config) if isinstance(config, str) else config)
    return RADBlur(cfg, resolve_backend(cfg.conv_impl))


def init_radblur(model: RADBlur, rng: jax.Array,
                 image_shape: tuple[int, int, int, int] = (1, 32, 32, 3), *,
                 compiler_options: dict | None = None) -> dict:
    """Jitted init; returns the `params` collection (shapes do not depend on image_shape).

    `compiler_options` are handed to `jax.jit` (the caller that compiles chooses them, e.g.
    `radblur_jax.compile_options.init_compiler_options()`).
    """
    variables = jax.jit(model.init, compiler_options=compiler_options)(
        rng, jnp.zeros(image_shape, jnp.float32))
    return variables["params"]
