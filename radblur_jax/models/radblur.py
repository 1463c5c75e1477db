"""RADBlur: Depth Anything V2 (DINOv2 + DPT) + blur stem + reversible decoder with ADA.

`RADBlur(cfg)(blurry)` with `blurry (B, H, W, 3)` in [0, 1], any H and W, returns
`RADBlurOutput(restored (n, B, H, W, 3), disparity (B, H, W), exit_logits (B, classes))`.
Padding happens inside: the blur stem sees the image reflect-padded to a multiple of 16, the ViT
that image padded (reflect) or resized to a multiple of 14; outputs are cropped back to (H, W).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from radblur_jax.models.decoder import BlurStem, ReversibleDecoder
from radblur_jax.models.depth_anything import IMAGENET_MEAN, IMAGENET_STD, DepthAnything
from radblur_jax.models.layers import apply_separable, bicubic_resize, bilinear_resize
from radblur_jax.models.radblur_presets import radblur_config


class RADBlurOutput(NamedTuple):
    """restored `(n, B, H, W, 3)` (one image per sub-decoder run), disparity `(B, H, W)`,
    exit_logits `(B, len(psnr_edges) + 1)`."""
    restored: jax.Array
    disparity: jax.Array
    exit_logits: jax.Array


def _ceil_to(x: int, m: int) -> int:
    return int(math.ceil(x / m) * m)


def _reflect_pad(x: jax.Array, height: int, width: int) -> jax.Array:
    """Reflect-pads `(B, h, w, C)` at the bottom/right to `(B, height, width, C)`."""
    _, h, w, _ = x.shape
    return jnp.pad(x, ((0, 0), (0, height - h), (0, width - w), (0, 0)), mode="reflect")


def region_bilinear_matrix(in_size: int, out_size: int, in_pixel: float,
                           out_pixel: float) -> np.ndarray:
    """(out, in) bilinear matrix between grids anchored at the same image origin.

    Input pixels are `in_pixel` image pixels wide, output pixels `out_pixel`; output pixel j's
    centre `(j + 0.5) * out_pixel` is sampled at input coordinate `centre / in_pixel - 0.5`.
    """
    src = np.clip((np.arange(out_size) + 0.5) * out_pixel / in_pixel - 0.5, 0, in_size - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = src - i0
    mat = np.zeros((out_size, in_size))
    np.add.at(mat, (np.arange(out_size), i0), 1.0 - lam)
    np.add.at(mat, (np.arange(out_size), i1), lam)
    return mat


def exit_depth(exit_class: int, num_sub_decoders: int, num_classes: int) -> int:
    """Sub-decoders to run for a blur class (0 = most blurred -> all K; the sharpest -> fewest)."""
    share = (num_classes - int(exit_class)) / num_classes
    return max(1, min(num_sub_decoders, int(math.ceil(num_sub_decoders * share))))


class ExitHead(nn.Module):
    """Blur-degree classifier on pooled ViT tokens `(B, h, w, D)` -> logits `(B, classes)`.

    Gradients stop at the tokens: the exit loss trains only this head.
    """
    num_classes: int
    hidden: int = 128

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = jax.lax.stop_gradient(jnp.mean(tokens, axis=(1, 2)))
        x = nn.LayerNorm(name="norm")(x)
        x = nn.gelu(nn.Dense(self.hidden, name="fc1")(x), approximate=False)
        return nn.Dense(self.num_classes, name="fc2")(x)


class RADBlur(nn.Module):
    """The assembled network; `cfg` from `radblur_config` (see radblur_presets.py)."""
    cfg: ml_collections.ConfigDict

    def setup(self) -> None:
        d = self.cfg.decoder
        self.depth = DepthAnything(self.cfg.encoder, self.cfg.dpt)
        self.stem = BlurStem(d.width, d.stem_blocks)
        self.decoder = ReversibleDecoder(
            d.width, d.num_sub_decoders, d.fft, d.depth_fusion, d.reversible, d.anchor_every,
            d.dw_expand, d.ffn_expand, d.unroll)
        self.exit_head = ExitHead(len(self.cfg.exit.psnr_edges) + 1, self.cfg.exit.hidden)

    def _vit_input(self, padded: jax.Array) -> tuple[jax.Array, tuple[int, int]]:
        """ViT input from the stem-padded image, and the (H, W) image pixels it covers."""
        _, hs, ws, _ = padded.shape
        if self.cfg.vit_input == "pad":
            x = _reflect_pad(padded, _ceil_to(hs, 14), _ceil_to(ws, 14))
            cover = (x.shape[1], x.shape[2])
        elif self.cfg.vit_input == "resize":
            size = (max(14, round(hs / 14) * 14), max(14, round(ws / 14) * 14))
            x, cover = bicubic_resize(padded, size=size), (hs, ws)
        else:
            raise ValueError(f"unknown vit_input {self.cfg.vit_input!r}; expected pad or resize")
        mean, std = jnp.asarray(IMAGENET_MEAN), jnp.asarray(IMAGENET_STD)
        return (x - mean) / std, cover

    def encode(self, blurry: jax.Array):
        """Runs the depth model; returns `(padded image, DepthOutput, covered (H, W))`."""
        _, h, w, _ = blurry.shape
        padded = _reflect_pad(blurry, _ceil_to(h, 16), _ceil_to(w, 16))
        vit_in, cover = self._vit_input(padded)
        return padded, self.depth(vit_in, return_features=True), cover

    def exit_logits(self, blurry: jax.Array) -> jax.Array:
        """Blur-degree logits `(B, classes)` for `blurry (B, H, W, 3)`."""
        return self.exit_head(self.encode(blurry)[1].tokens)

    def __call__(self, blurry: jax.Array, num_active: Optional[int] = None) -> RADBlurOutput:
        """`blurry (B, H, W, 3)` in [0, 1]; `num_active` runs only the first n sub-decoders."""
        _, h, w, _ = blurry.shape
        padded, depth_out, cover = self.encode(blurry)
        states, bottleneck = self.stem(padded)
        depth_features = None
        if self.cfg.decoder.depth_fusion == "attention":
            depth_features = []
            for feat, state in zip(depth_out.features, states):
                (_, fh, fw, _), (_, sh, sw, _) = feat.shape, state.shape
                step = padded.shape[1] // sh
                depth_features.append(apply_separable(
                    feat, region_bilinear_matrix(fh, sh, cover[0] / fh, step),
                    region_bilinear_matrix(fw, sw, cover[1] / fw, step)))
        restored = self.decoder(states, bottleneck, depth_features, padded, num_active)
        disparity = depth_out.disparity
        if self.cfg.vit_input == "resize":
            disparity = bilinear_resize(disparity[..., None], padded.shape[1:3],
                                        align_corners=False)[..., 0]
        return RADBlurOutput(restored[:, :, :h, :w], disparity[:, :h, :w],
                             self.exit_head(depth_out.tokens))


def build_radblur(config: ml_collections.ConfigDict | str) -> RADBlur:
    """The model for a config or a preset name."""
    return RADBlur(radblur_config(config) if isinstance(config, str) else config)


def init_radblur(model: RADBlur, rng: jax.Array, image_shape=(1, 32, 32, 3)) -> dict:
    """Jitted init; returns the `params` collection (shapes do not depend on image_shape)."""
    variables = jax.jit(model.init)(rng, jnp.zeros(image_shape, jnp.float32))
    return variables["params"]


def splice_depth_params(params: dict, pretrained: dict) -> dict:
    """Returns `params` with the encoder (+ DPT) replaced by converted weights.

    `pretrained`: a Depth Anything tree (`pretrained/`, `depth_head/`) or a DINOv2 ViT tree;
    shapes must match the RADBlur config's encoder/DPT exactly.
    """
    target = dict(params["depth"])
    source = pretrained if "pretrained" in pretrained else {"pretrained": pretrained}
    for name, subtree in source.items():
        if name not in target:
            raise ValueError(f"pretrained params: unexpected top-level key {name!r}; "
                             f"expected one of {sorted(target)}")
        want = jax.tree_util.tree_map(jnp.shape, target[name])
        got = jax.tree_util.tree_map(jnp.shape, subtree)
        if want != got:
            raise ValueError(f"pretrained params {name!r}: shapes/keys differ from the RADBlur "
                             "config's encoder/DPT (check the preset matches the checkpoint)")
        target[name] = jax.tree_util.tree_map(jnp.asarray, subtree)
    return {**params, "depth": target}


def radblur_from_pretrained(checkpoint_dir: str, config: ml_collections.ConfigDict | str,
                            rng: jax.Array) -> tuple[RADBlur, Any]:
    """RADBlur with its encoder (+ DPT) initialised from a converted checkpoint directory."""
    from radblur_jax.convert.checkpoint import load_pretrained
    model = build_radblur(config)
    _, pretrained, _ = load_pretrained(checkpoint_dir)
    return model, splice_depth_params(init_radblur(model, rng), pretrained)


def deblur_adaptive(model: RADBlur, params: Any, blurry: jax.Array) -> tuple[jax.Array, int]:
    """Adaptive exit for one image (or window) `(1, H, W, 3)`: the exit head picks how many
    sub-decoders run; returns `(restored (1, H, W, 3), n)`. (The encoder runs twice.)"""
    d = model.cfg.decoder
    logits = jax.jit(lambda p, x: model.apply({"params": p}, x, method=RADBlur.exit_logits))(
        params, blurry)
    n = exit_depth(int(jnp.argmax(logits[0])), d.num_sub_decoders, logits.shape[-1])
    out = jax.jit(lambda p, x: model.apply({"params": p}, x, num_active=n))(params, blurry)
    return out.restored[-1], n
