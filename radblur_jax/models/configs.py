"""THE table of model sizes, and the config switches with their allowed values.

One row per size: `tiny` (tests and CPU demo), `s`, `b`, `l`, `g` = DINOv2 ViT-S/B/L/G. Each
row gives the ViT shape, the Depth Anything V2 taps and DPT widths, the RADBlur decoder width and
number of sub-decoders K. Everything else that needs a size reads it from here (the converter's
head counts and taps, the depth CLI's `--random-init`, the exit head's PSNR classes).

  radblur_config(name)   full RADBlur ConfigDict (name in tiny/s/b/l/g, or vits/vitb/vitl/vitg)
  encoder_config(name)   DINOv2 ViT ConfigDict;  dpt_config(name): Depth Anything V2 DPT ConfigDict
  validate_config(cfg)   checks every switch once; `build_radblur` calls it

RADBlur config fields (docs/conventions.md has the encoder/DPT ones):
```
dtype:      compute dtype of every module ("float32" | "bfloat16" | "float16"); params stay
            float32; norms, softmax, FFT and losses run in float32. `encoder.dtype` follows it.
conv_impl:  the backend of the convolutions and the stem/decoder LayerNorms ("auto" | "fast" |
            "lax"; models/backends.py), resolved once by `build_radblur` /
            `build_depth_anything`: "fast" = matmul / shifted-add forms and closed-form VJPs
            (fast on XLA:CPU), "lax" = `lax.conv_general_dilated` and flax's LayerNorm formula,
            "auto" = fast on the CPU backend, lax elsewhere. The same function either way.
encoder, dpt
decoder:    width (channels at full resolution), num_sub_decoders (K), stem_blocks,
            stem_remat (the stem's activations recomputed in the backward pass instead of
            kept through the decoder's backward: less memory, ~1% more FLOPs for `s`),
            fft (FFT branch in the coupling blocks), depth_fusion ("attention" | "none"),
            reversible (custom-VJP backprop), anchor_every, dw_expand, ffn_expand, unroll,
            keep_last (the reversible forward keeps the last sub-decoder's activations, so
            the backward does not rebuild and re-run it: fewer bytes moved, more memory)
vit_input:  "pad" (reflect to a multiple of the patch) | "resize" (bicubic to the nearest multiple)
exit:       psnr_edges (dB; classes = len + 1, class 0 = most blurred), hidden
```
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import ml_collections


class Size(NamedTuple):
    """One model size: DINOv2 name, ViT shape and taps, DPT widths, RADBlur decoder."""
    dinov2: str
    embed_dim: int
    depth: int
    num_heads: int
    ffn: str
    taps: tuple[int, ...]
    dpt_features: int
    dpt_out_channels: tuple[int, ...]
    decoder_width: int
    num_sub_decoders: int


PATCH_SIZE = 14  # every DINOv2 / Depth Anything V2 model

PRESETS: dict[str, Size] = {
    "tiny": Size("tiny", 64, 4, 4, "mlp", (0, 1, 2, 3), 16, (16, 32, 64, 64), 16, 2),
    "s": Size("vits", 384, 12, 6, "mlp", (2, 5, 8, 11), 64, (48, 96, 192, 384), 32, 4),
    "b": Size("vitb", 768, 12, 12, "mlp", (2, 5, 8, 11), 128, (96, 192, 384, 768), 64, 4),
    "l": Size("vitl", 1024, 24, 16, "mlp", (4, 11, 17, 23), 256, (256, 512, 1024, 1024), 64, 8),
    "g": Size("vitg", 1536, 40, 24, "swiglu", (9, 19, 29, 39), 384, (1536,) * 4, 64, 8),
}

# Exit head classes: class j means edges[j-1] <= PSNR(blurry, sharp) < edges[j].
EXIT_PSNR_EDGES = (20.0, 25.0, 30.0, 35.0, 40.0)

# Allowed values of the string switches (validated once, in `validate_config`).
DTYPES = ("float32", "bfloat16", "float16")
DEPTH_FUSIONS = ("attention", "none")
VIT_INPUTS = ("pad", "resize")
POS_EMBED_MODES = ("offset", "antialias", "size")
FFNS = ("mlp", "swiglu")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "blocked")
CONV_IMPLS = ("auto", "fast", "lax")
DPT_HEADS = ("relative", "metric")
PIXEL_LOSSES = ("l1", "psnr")


def radblur_names() -> tuple[str, ...]:
    """RADBlur size names, smallest first: tiny, s, b, l, g."""
    return tuple(PRESETS)


def dinov2_names() -> tuple[str, ...]:
    """The same sizes by their DINOv2 names: tiny, vits, vitb, vitl, vitg."""
    return tuple(s.dinov2 for s in PRESETS.values())


def size(name: str) -> Size:
    """The table row for a RADBlur name (`s`) or a DINOv2 name (`vits`)."""
    if name in PRESETS:
        return PRESETS[name]
    for row in PRESETS.values():
        if row.dinov2 == name:
            return row
    raise ValueError(f"unknown model size {name!r}; expected one of "
                     f"{', '.join(radblur_names() + dinov2_names()[1:])}")


def heads_for_width(embed_dim: int) -> int:
    """Attention heads of the table's ViT with this width, else head_dim 64."""
    for row in PRESETS.values():
        if row.embed_dim == embed_dim:
            return row.num_heads
    return max(embed_dim // 64, 1)


def taps_for_depth(depth: int) -> tuple[int, ...]:
    """Depth Anything V2 tap blocks (0-based) of the table's ViT with `depth` blocks, else
    the last block of each quarter."""
    for row in PRESETS.values():
        if row.depth == depth:
            return row.taps
    return tuple(depth // 4 * (i + 1) - 1 for i in range(4))


def check_choice(field: str, value: Any, choices: Sequence[Any]) -> Any:
    """Returns `value` if it is one of `choices`, else a ValueError naming `field`."""
    if value not in choices:
        raise ValueError(f"config {field}={value!r}: expected one of "
                         f"{', '.join(map(str, choices))}")
    return value


def encoder_config(name: str, *, num_registers: int = 0, pos_grid: int = 37,
                   pos_embed_mode: str = "offset", dtype: Any = "float32"
                   ) -> ml_collections.ConfigDict:
    """DINOv2 ViT config for a size (`tiny`, `s`/`vits`, ...). `dtype` may be a
    FieldReference."""
    row = size(name)
    return ml_collections.ConfigDict(dict(
        embed_dim=row.embed_dim, depth=row.depth, num_heads=row.num_heads, mlp_ratio=4.0,
        ffn=row.ffn, num_registers=num_registers, patch_size=PATCH_SIZE, pos_grid=pos_grid,
        pos_embed_mode=pos_embed_mode, taps=row.taps, attention_impl="auto", remat=False,
        dtype=dtype))


def dpt_config(name: str, *, head: str = "relative", max_depth: float = 20.0
               ) -> ml_collections.ConfigDict:
    """Depth Anything V2 DPT neck/head config for a size."""
    row = size(name)
    return ml_collections.ConfigDict(dict(
        features=row.dpt_features, out_channels=row.dpt_out_channels, head=head,
        max_depth=max_depth))


def radblur_config(name: str) -> ml_collections.ConfigDict:
    """RADBlur config for `name` in tiny/s/b/l/g (DINOv2 names accepted); `cfg.dtype` drives
    `cfg.encoder.dtype` (one FieldReference)."""
    row = size(name)
    dtype = ml_collections.FieldReference("float32")
    return ml_collections.ConfigDict(dict(
        name=next(k for k, v in PRESETS.items() if v is row),
        dtype=dtype,
        conv_impl="auto",
        encoder=encoder_config(name, dtype=dtype),
        dpt=dpt_config(name),
        decoder=dict(width=row.decoder_width, num_sub_decoders=row.num_sub_decoders,
                     stem_blocks=1, stem_remat=False, fft=True, depth_fusion="attention",
                     reversible=True, anchor_every=2, dw_expand=2, ffn_expand=2, unroll=False,
                     keep_last=False),
        vit_input="pad",
        exit=dict(psnr_edges=EXIT_PSNR_EDGES, hidden=128),
    ))


def validate_encoder(enc: ml_collections.ConfigDict, prefix: str = "encoder") -> None:
    """Checks an encoder config's switches and taps; ValueError naming the field."""
    check_choice(f"{prefix}.ffn", enc.ffn, FFNS)
    check_choice(f"{prefix}.pos_embed_mode", enc.pos_embed_mode, POS_EMBED_MODES)
    check_choice(f"{prefix}.attention_impl", enc.attention_impl, ATTENTION_IMPLS)
    check_choice(f"{prefix}.dtype", enc.dtype, DTYPES)
    if any(not 0 <= int(t) < enc.depth for t in enc.taps):
        raise ValueError(f"config {prefix}.taps={tuple(enc.taps)}: out of range for depth "
                         f"{enc.depth}")


def validate_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks every switch of a RADBlur config once; returns it. ValueError names the field."""
    check_choice("dtype", cfg.dtype, DTYPES)
    if cfg.encoder.dtype != cfg.dtype:
        raise ValueError(f"config encoder.dtype={cfg.encoder.dtype!r} differs from "
                         f"dtype={cfg.dtype!r}; set cfg.dtype only")
    check_choice("conv_impl", cfg.conv_impl, CONV_IMPLS)
    validate_encoder(cfg.encoder)
    if len(cfg.encoder.taps) != 4:
        raise ValueError(f"config encoder.taps={tuple(cfg.encoder.taps)}: Depth Anything needs 4")
    check_choice("dpt.head", cfg.dpt.head, DPT_HEADS)
    check_choice("decoder.depth_fusion", cfg.decoder.depth_fusion, DEPTH_FUSIONS)
    check_choice("vit_input", cfg.vit_input, VIT_INPUTS)
    edges = tuple(cfg.exit.psnr_edges)
    if not edges or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"config exit.psnr_edges={edges}: expected increasing dB values")
    d = cfg.decoder
    for field in ("width", "num_sub_decoders", "stem_blocks", "anchor_every", "dw_expand",
                  "ffn_expand"):
        if int(d[field]) < 1:
            raise ValueError(f"config decoder.{field}={d[field]!r}: expected >= 1")
    return cfg


def uses_depth_attention(cfg: ml_collections.ConfigDict) -> bool:
    """Whether the decoder fuses depth features (ADA); False: the `depth_fusion="none"` ablation."""
    return check_choice("decoder.depth_fusion", cfg.decoder.depth_fusion,
                        DEPTH_FUSIONS) == "attention"
