"""PyTorch state dicts -> Flax params for DINOv2 and Depth Anything V2 (pure functions).

Formats (`FORMATS`):
  "dinov2"             original facebookresearch/dinov2 keys (`blocks.i.attn.qkv`, ...).
  "dinov2_hf"          transformers Dinov2Model / Dinov2WithRegistersModel, both the hub naming
                       (`attention.attention.query`, `mlp.weights_in`) and the v5 in-memory one
                       (`attention.q_proj`, `mlp.gate_proj`).
  "depth_anything"     original Depth Anything V2 `.pth` (`pretrained.` + `depth_head.`).
  "depth_anything_hf"  transformers DepthAnythingForDepthEstimation (`backbone.`, `neck.`, `head.`).

Main entry: `convert_state_dict(fmt, state_dict) -> (params, encoder_cfg, dpt_cfg_or_None)`
(`check_state_dict` validates only, from shapes), where
`params` is the nested dict to pass as `{"params": params}` to `DinoViT` (dinov2 formats) or
`DepthAnything` (depth formats). HF formats are first renamed to the original keys
(`to_original_keys`); then every key maps by rule: `a.0.b` -> `a_0/b`, Linear weight `W.T`,
Conv `[O,I,kh,kw] -> [kh,kw,I,O]`, ConvTranspose `[I,O,kh,kw] -> [kh,kw,I,O]`, LayerNorm weight
-> `scale`. Every error is a `ConversionError` naming the offending keys.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from radblur_jax.convert import detect
from radblur_jax.models import configs

log = logging.getLogger(__name__)

FORMATS = ("dinov2", "dinov2_hf", "depth_anything", "depth_anything_hf")

# Stored in Depth Anything V2 checkpoints but never used by the forward pass.
KNOWN_UNUSED = re.compile(r"^depth_head\.scratch\.refinenet4\.resConfUnit1\.")
_CONV_TRANSPOSE = re.compile(r"^depth_head\.resize_layers\.[01]\.weight$")


class ConversionError(ValueError):
    """A state dict does not match the expected format or model."""


def _keys_msg(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# ------------------------------------------------------------------ HF -> original names

_HF_VIT_RENAMES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.mask_token$", "mask_token"),
    (r"^embeddings\.register_tokens$", "register_tokens"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^layernorm\.", "norm."),
    (r"^encoder\.layer\.(\d+)\.norm([12])\.", r"blocks.\1.norm\2."),
    (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^encoder\.layer\.(\d+)\.attention\.(?:output\.dense|o_proj)\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.mlp\.(fc[12])\.", r"blocks.\1.mlp.\2."),
    (r"^encoder\.layer\.(\d+)\.mlp\.weights_in\.", r"blocks.\1.mlp.w12."),
    (r"^encoder\.layer\.(\d+)\.mlp\.(?:weights_out|down_proj)\.", r"blocks.\1.mlp.w3."),
]
# Pieces fused on the original side: (pattern, fused key template, piece index, piece count).
_HF_VIT_FUSED = [
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$",
     "blocks.{0}.attn.qkv.{2}", {"query": 0, "key": 1, "value": 2}),
    (r"^encoder\.layer\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)$",
     "blocks.{0}.attn.qkv.{2}", {"q": 0, "k": 1, "v": 2}),
    (r"^encoder\.layer\.(\d+)\.mlp\.(gate|up)_proj\.(weight|bias)$",
     "blocks.{0}.mlp.w12.{2}", {"gate": 0, "up": 1}),
]
_HF_DPT_RENAMES = [
    (r"^neck\.reassemble_stage\.layers\.(\d)\.projection\.", r"depth_head.projects.\1."),
    (r"^neck\.reassemble_stage\.layers\.(\d)\.resize\.", r"depth_head.resize_layers.\1."),
    (r"^head\.conv1\.", "depth_head.scratch.output_conv1."),
    (r"^head\.conv2\.", "depth_head.scratch.output_conv2.0."),
    (r"^head\.conv3\.", "depth_head.scratch.output_conv2.2."),
]


def _rename_hf_dpt(key: str) -> str | None:
    m = re.match(r"^neck\.convs\.(\d)\.(.*)$", key)
    if m:
        return f"depth_head.scratch.layer{int(m[1]) + 1}_rn.{m[2]}"
    m = re.match(r"^neck\.fusion_stage\.layers\.(\d)\.(.*)$", key)
    if m:
        ref = f"depth_head.scratch.refinenet{4 - int(m[1])}."
        rest = re.sub(r"^residual_layer([12])\.convolution([12])\.", r"resConfUnit\1.conv\2.",
                      m[2])
        return ref + re.sub(r"^projection\.", "out_conv.", rest)
    for pat, rep in _HF_DPT_RENAMES:
        if re.match(pat, key):
            return re.sub(pat, rep, key)
    return None


def _hf_vit_to_original(sd: Mapping[str, np.ndarray], src_prefix: str, dst_prefix: str
                        ) -> tuple[dict, list]:
    """Renames HF ViT keys under `src_prefix`; returns (renamed, keys not understood)."""
    out, pieces, unknown = {}, {}, []
    for key, val in sd.items():
        if not key.startswith(src_prefix):
            unknown.append(key)
            continue
        k = key[len(src_prefix):]
        for pat, rep in _HF_VIT_RENAMES:
            if re.match(pat, k):
                out[dst_prefix + re.sub(pat, rep, k)] = val
                break
        else:
            for pat, template, order in _HF_VIT_FUSED:
                m = re.match(pat, k)
                if m:
                    fused = dst_prefix + template.format(*m.groups())
                    pieces.setdefault(fused, {})[order[m[2]]] = (key, val, len(order))
                    break
            else:
                unknown.append(key)
    for fused, parts in pieces.items():
        n = next(iter(parts.values()))[2]
        if sorted(parts) != list(range(n)):
            got = [parts[i][0] for i in sorted(parts)]
            raise ConversionError(f"incomplete fused parameter {fused}: only found {got}")
        out[fused] = np.concatenate([np.asarray(parts[i][1]) for i in range(n)], axis=0)
    return out, unknown


def to_original_keys(fmt: str, state_dict: Mapping[str, np.ndarray]) -> dict:
    """Renames a state dict of format `fmt` to the original dinov2 / DA V2 keys."""
    if fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if fmt in ("dinov2", "depth_anything"):
        return dict(state_dict)
    if fmt == "dinov2_hf":
        prefix = "dinov2." if all(k.startswith("dinov2.") for k in state_dict) else ""
        out, unknown = _hf_vit_to_original(state_dict, prefix, "")
    else:
        vit_sd = {k: v for k, v in state_dict.items() if k.startswith("backbone.")}
        out, unknown = _hf_vit_to_original(vit_sd, "backbone.", "pretrained.")
        for key, val in state_dict.items():
            if key.startswith("backbone."):
                continue
            new = _rename_hf_dpt(key)
            if new is None:
                unknown.append(key)
            else:
                out[new] = val
    if unknown:
        raise ConversionError(f"unexpected keys for format {fmt!r}: {_keys_msg(unknown)}")
    return out


# ------------------------------------------------------------------ config inference


def _vit_prefix(fmt: str) -> str:
    return "pretrained." if fmt.startswith("depth_anything") else ""


def _require(sd: Mapping, keys) -> None:
    missing = [k for k in keys if k not in sd]
    if missing:
        raise ConversionError(f"missing keys: {_keys_msg(missing)}")


def default_taps(depth: int) -> tuple[int, ...]:
    """Depth Anything V2 tap blocks (0-based) for a ViT of `depth` blocks (`configs` table)."""
    return configs.taps_for_depth(depth)


def preset_for(embed_dim: int, depth: int | None = None) -> configs.Size | None:
    """The size-table row (radblur_jax/models/configs.py) with this ViT width (and depth, when
    given), else None."""
    for row in configs.PRESETS.values():
        if row.embed_dim == embed_dim and depth in (None, row.depth):
            return row
    return None


def _block_depth(fmt: str, blocks: set[int], dim: int, stated: int | None) -> int:
    """The ViT's number of blocks. The highest block index present is not enough: a file that
    lost its last blocks would convert into a shallower model with other taps. So the depth is
    `stated` (a transformers config.json's num_hidden_layers), else the size table's for a
    known width, and every block below it must be there; only an unknown width without a
    stated depth falls back to the highest index + 1."""
    pre = _vit_prefix(fmt)
    row = preset_for(dim)
    if stated is not None:
        want, why = int(stated), f"its config.json says num_hidden_layers={stated}"
    elif row is not None:
        want, why = row.depth, (f"a ViT of width {dim} has {row.depth} blocks ({row.dinov2} in "
                                "radblur_jax/models/configs.py)")
    else:
        return max(blocks) + 1

    def name(i: int) -> str:
        hf = ("backbone." if fmt.startswith("depth_anything") else "") + f"encoder.layer.{i}.*"
        return f"{pre}blocks.{i}.*" + (f" ({hf})" if fmt.endswith("_hf") else "")

    has = f"the checkpoint has {len(blocks)} blocks, highest index {max(blocks)}, but {why}"
    missing = [i for i in range(want) if i not in blocks]
    if missing:
        raise ConversionError(f"missing keys: {name(missing[0])}: {has}: a truncated or "
                              "partial checkpoint?")
    extra = sorted(i for i in blocks if i >= want)
    if extra:
        raise ConversionError(f"unexpected keys: {name(extra[0])}: {has}")
    return want


def _infer_from_original(fmt: str, sd: Mapping[str, np.ndarray], *, num_heads: int | None,
                         taps, depth: int | None) -> tuple:
    pre = _vit_prefix(fmt)
    _require(sd, [pre + "cls_token", pre + "pos_embed", pre + "patch_embed.proj.weight"])
    dim = int(sd[pre + "cls_token"].shape[-1])
    patch = int(sd[pre + "patch_embed.proj.weight"].shape[-1])
    n = int(sd[pre + "pos_embed"].shape[1]) - 1
    grid = math.isqrt(n)
    if grid * grid != n:
        raise ConversionError(f"{pre}pos_embed holds {n} patch positions, not a square grid")
    blocks = {int(m[1]) for k in sd for m in [re.match(re.escape(pre) + r"blocks\.(\d+)\.", k)]
              if m}
    if not blocks:
        raise ConversionError(f"missing keys: no {pre}blocks.N.* found")
    depth = _block_depth(fmt, blocks, dim, depth)
    regs = int(sd[pre + "register_tokens"].shape[1]) if pre + "register_tokens" in sd else 0
    swiglu = pre + "blocks.0.mlp.w12.weight" in sd
    if swiglu:
        ratio = 4.0
    else:
        _require(sd, [pre + "blocks.0.mlp.fc1.weight"])
        ratio = sd[pre + "blocks.0.mlp.fc1.weight"].shape[0] / dim
    mode = detect.default_pos_embed_mode(fmt, regs)
    enc = configs.encoder_config("vits", num_registers=regs, pos_grid=grid, pos_embed_mode=mode)
    enc.embed_dim, enc.depth, enc.patch_size = dim, depth, patch
    enc.num_heads = int(num_heads or configs.heads_for_width(dim))
    enc.mlp_ratio, enc.ffn = float(ratio), "swiglu" if swiglu else "mlp"
    if taps is not None:
        enc.taps = tuple(taps)
    else:
        if depth < 4:  # the guess below would give negative block indices
            raise ConversionError(f"cannot guess 4 tap blocks for a ViT of {depth} blocks")
        enc.taps = default_taps(depth)
        if preset_for(dim, depth) is None:
            log.warning("no preset ViT has width %d and depth %d: taps %s GUESSED", dim, depth,
                        enc.taps)
    if not fmt.startswith("depth_anything"):
        return enc, None
    head = ["depth_head.scratch.layer1_rn.weight"] + [
        f"depth_head.projects.{i}.weight" for i in range(4)]
    _require(sd, head)
    dpt = configs.dpt_config("vits")
    dpt.features = int(sd[head[0]].shape[0])
    dpt.out_channels = tuple(int(sd[k].shape[0]) for k in head[1:])
    return enc, dpt


def infer_config(fmt: str, state_dict: Mapping[str, np.ndarray], *, num_heads: int | None = None,
                 taps=None, depth: int | None = None
                 ) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict | None]:
    """(encoder_cfg, dpt_cfg or None) from key names and shapes.

    Heads are not stored: the `configs` table's count for its widths, else head_dim 64, unless
    `num_heads` is given. The number of blocks is `depth` when given (a transformers
    config.json's), else the table's for a known width, and every block below it must be
    present (a ConversionError names the first missing `blocks.N`); only an unknown width
    without `depth` takes the highest block index + 1. Taps default to Depth Anything V2's
    blocks (`default_taps`): the table's for a preset (width, depth), else a guess (logged;
    `preset_for` tells which). `pos_embed_mode`: `detect.default_pos_embed_mode` (original non-reg
    "offset", any reg model "antialias", HF non-reg "size"). The DPT
    head type is not stored: `dpt.head` is "relative"; set "metric"/`max_depth` yourself.
    """
    return _infer_from_original(fmt, to_original_keys(fmt, state_dict), num_heads=num_heads,
                                taps=taps, depth=depth)


# ------------------------------------------------------------------ key map + validation


def _flax_path(key: str) -> tuple[tuple[str, ...], str]:
    parts = key.split(".")
    path = []
    for part in parts[:-1]:
        if part.isdigit() and path:
            path[-1] = f"{path[-1]}_{part}"
        else:
            path.append(part)
    return tuple(path), parts[-1]


def _target(key: str, shape: tuple) -> tuple[tuple[str, ...], tuple | None]:
    """Flax path of original-layout `key` and the axis permutation to apply (None: as is)."""
    path, leaf = _flax_path(key)
    perm = None
    if leaf == "weight":
        if len(shape) == 4:
            perm = (2, 3, 0, 1) if _CONV_TRANSPOSE.match(key) else (2, 3, 1, 0)
            leaf = "kernel"
        elif len(shape) == 2:
            perm, leaf = (1, 0), "kernel"
        elif len(shape) == 1:
            leaf = "scale"
    return path + (leaf,), perm


def _torch_key(path: tuple[str, ...]) -> str:
    """Original-layout key for a Flax path (inverse of `_target`, for messages)."""
    parts = [re.sub(r"_(\d+)$", r".\1", p) for p in path[:-1]]
    leaf = {"kernel": "weight", "scale": "weight"}.get(path[-1], path[-1])
    return ".".join(parts + [leaf])


def _model_shapes(enc, dpt) -> dict:
    """Flat {path: shape} of the Flax model's params, via `jax.eval_shape` (no compute)."""
    size = 2 * enc.patch_size
    images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    if dpt is None:
        from radblur_jax.models.vit import DinoViT
        model = DinoViT(enc)
    else:
        from radblur_jax.models.depth_anything import DepthAnything
        model = DepthAnything(enc, dpt)
    shapes = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    return {tuple(p.key for p in path): tuple(leaf.shape) for path, leaf in flat}


def _is_floating(value) -> bool:
    """Whether an array's values are floating point (bfloat16 included); True without a dtype."""
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return True
    try:
        return bool(jnp.issubdtype(np.dtype(dtype), jnp.floating))
    except TypeError:  # a framework's dtype numpy does not read (torch): its own flag
        return bool(getattr(dtype, "is_floating_point", True))


def _check(fmt: str, sd: Mapping[str, np.ndarray], enc, dpt) -> dict:
    """{original key: (flax path, perm)} after checking keys, shapes and dtypes against the
    model."""
    expected = _model_shapes(enc, dpt)
    plan, unexpected, bad, not_float = {}, [], [], []
    unused = [k for k in sd if KNOWN_UNUSED.match(k)]
    if unused:
        log.info("dropping %d known-unused keys: %s", len(unused), _keys_msg(unused))
    for key, val in sd.items():
        if KNOWN_UNUSED.match(key):
            continue
        shape = tuple(np.shape(val))
        path, perm = _target(key, shape)
        new_shape = tuple(shape[i] for i in perm) if perm else shape
        if path not in expected:
            unexpected.append(key)
        elif new_shape != expected[path]:
            bad.append(f"{key} {shape} -> {'/'.join(path)} {new_shape}, model expects "
                       f"{expected[path]}")
        elif not _is_floating(val):
            not_float.append(f"{key} ({val.dtype})")
        plan[key] = (path, perm)
    filled = {path for path, _ in plan.values()}
    missing = [f"{_torch_key(p)} (param {'/'.join(p)})" for p in expected if p not in filled]
    problems = []
    if missing:
        problems.append(f"missing keys: {_keys_msg(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_keys_msg(unexpected)}")
    if bad:
        problems.append("shape mismatch: " + "; ".join(bad[:8]))
    if not_float:
        # Casting integers to float32 would convert a quantized checkpoint into nonsense.
        problems.append("weights that are not floating point (a quantized checkpoint? "
                        f"convert its float original): {_keys_msg(not_float)}")
    if problems:
        raise ConversionError(f"format {fmt!r}: " + " | ".join(problems))
    return plan


def check_state_dict(fmt: str, state_dict: Mapping[str, np.ndarray], *,
                     num_heads: int | None = None, taps=None, depth: int | None = None
                     ) -> tuple:
    """Validates keys and shapes without converting; returns `(encoder_cfg, dpt_cfg)`.

    Only `np.shape` of each value is read for the original formats (cheap for any size).
    """
    sd = to_original_keys(fmt, state_dict)
    enc, dpt = _infer_from_original(fmt, sd, num_heads=num_heads, taps=taps, depth=depth)
    _check(fmt, sd, enc, dpt)
    return enc, dpt


def convert_state_dict(fmt: str, state_dict: Mapping[str, np.ndarray], *,
                       num_heads: int | None = None, taps=None, depth: int | None = None
                       ) -> tuple:
    """Maps a flat `{torch key: array}` of format `fmt` to `(params, encoder_cfg, dpt_cfg)`.

    `params` is a nested dict of float32 numpy arrays covering every parameter of the Flax
    model (`DinoViT(encoder_cfg)` or `DepthAnything(encoder_cfg, dpt_cfg)`; `dpt_cfg` is None for
    the dinov2 formats). Raises `ConversionError` naming missing, unexpected and misshapen keys
    (before any array is copied). Keyword arguments as in `infer_config`.
    """
    sd = to_original_keys(fmt, state_dict)
    enc, dpt = _infer_from_original(fmt, sd, num_heads=num_heads, taps=taps, depth=depth)
    nested: dict = {}
    for key, (path, perm) in _check(fmt, sd, enc, dpt).items():
        arr = np.asarray(sd[key], dtype=np.float32)
        node = nested
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = np.ascontiguousarray(arr.transpose(perm) if perm else arr)
    return nested, enc, dpt
