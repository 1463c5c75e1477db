"""Recognise which network and layout a PyTorch state dict holds, from its keys alone.

Formats (the names `keymaps.convert_state_dict` takes):
  - "dinov2":            original DINOv2 (`patch_embed.proj.weight`, `blocks.N.*`; `register_tokens`
                         in the `_reg4` models),
  - "dinov2_hf":         transformers `Dinov2Model` / `Dinov2WithRegistersModel`,
  - "depth_anything":    original Depth Anything V2 (`pretrained.*` + `depth_head.*`),
  - "depth_anything_hf": transformers `DepthAnythingForDepthEstimation` (`backbone.*`, `neck.*`,
                         `head.*`).
Sizes (vits/vitb/...) come from `keymaps.infer_config`. Head type and Depth Anything version are
not in the keys: `head_from_name` reads the official V2 file names, `refuse_v1_name` refuses the
V1 ones (same keys as V2, other taps).
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

from radblur_jax.convert.readers import CheckpointError
from radblur_jax.models import configs

FORMATS = ("dinov2", "dinov2_hf", "depth_anything", "depth_anything_hf")
MODEL_KIND = {"dinov2": "dinov2", "dinov2_hf": "dinov2",
              "depth_anything": "depth_anything", "depth_anything_hf": "depth_anything"}
SIZE_NAMES = configs.dinov2_names()

# format -> (a key that must be present, prefixes of which at least one key must start with)
_SIGNATURES = {
    "depth_anything": ("pretrained.patch_embed.proj.weight", ("depth_head.",)),
    "depth_anything_hf": ("backbone.embeddings.patch_embeddings.projection.weight",
                          ("neck.", "head.")),
    "dinov2": ("patch_embed.proj.weight", ("blocks.",)),
    "dinov2_hf": ("embeddings.patch_embeddings.projection.weight", ("encoder.layer.",)),
}


# The official Depth Anything V2 releases: relative `depth_anything_v2_vit{s,b,l,g}.pth`, metric
# `depth_anything_v2_metric_{hypersim,vkitti}_vit{s,b,l}.pth` (indoor max depth 20 m, outdoor 80 m,
# as in their model cards). The head type is in the name only, not in the weights.
_RELATIVE_NAME = re.compile(r"^depth_anything_v2_vit[sblg](?![a-z0-9])")
_METRIC_NAME = re.compile(r"^depth_anything_v2_metric_(hypersim|vkitti)_vit[sblg](?![a-z0-9])")
METRIC_MAX_DEPTH = {"hypersim": 20.0, "vkitti": 80.0}
# The original Depth Anything (V1) releases, `depth_anything_vit{s,b,l}14.pth`: the same keys as
# V2, but V1 taps the last 4 blocks and its head differs, so by keys alone they would convert
# silently into a wrong model. Only the name tells them apart.
_V1_NAME = re.compile(r"^depth_anything_vit[sbl]14(?![a-z0-9])")


def refuse_v1_name(source: str) -> None:
    """CheckpointError when `source` has an official Depth Anything V1 file name."""
    name = os.path.basename(os.fspath(source).rstrip("/\\")).lower()
    if _V1_NAME.match(name):
        raise CheckpointError(
            f"{source}: an original Depth Anything V1 checkpoint (by its file name): V1 is not "
            "supported, only Depth Anything V2 (V1 has V2's keys but taps the last 4 blocks and "
            "has another head, so it would convert into a wrong model)")


def head_from_name(source: str) -> tuple[str, float | None] | None:
    """`(head, max_depth)` from an official Depth Anything V2 file name (`max_depth` None for
    "relative"), or None when the name is not one of them."""
    name = os.path.basename(os.fspath(source).rstrip("/\\")).lower()
    m = _METRIC_NAME.match(name)
    if m:
        return "metric", METRIC_MAX_DEPTH[m.group(1)]
    if _RELATIVE_NAME.match(name):
        return "relative", None
    return None


class UnknownFormatError(CheckpointError):
    """The state dict is not one of the supported DINOv2 / Depth Anything V2 layouts."""


@dataclasses.dataclass
class Detection:
    """What a checkpoint holds: format, model kind, size and the configs to build it."""
    format: str
    model_kind: str
    size: str
    num_registers: int
    pos_embed_mode: str
    encoder_cfg: Any
    dpt_cfg: Any | None
    # How the head type was decided: "detected" (transformers config.json), "hf_default" (a
    # transformers config.json without depth_estimation_type: transformers' default, relative),
    # "given" (--head), "filename" (an official Depth Anything V2 file name) or "assumed"; None
    # without a DPT.
    head_source: str | None = None
    # Where the taps came from: "config.json" (transformers out_indices), "table" (a preset
    # width and depth of radblur_jax/models/configs.py) or "guessed" (neither).
    taps_source: str = "table"
    # A transformers relative head's max_depth, folded into the last convolution (1: none).
    output_scale: float = 1.0

    def taps_summary(self) -> str:
        """`taps=(...)`, and for guessed taps what they are and why they are a guess."""
        taps = f"taps={tuple(self.encoder_cfg.taps)}"
        if self.taps_source != "guessed":
            return taps
        return (f"{taps} GUESSED (no preset in radblur_jax/models/configs.py has width "
                f"{self.encoder_cfg.embed_dim} and depth {self.encoder_cfg.depth}; these are "
                "the table's taps for that depth, else the last block of each quarter)")

    def summary(self) -> str:
        regs = f"{self.num_registers} registers" if self.num_registers else "no registers"
        return (f"format={self.format} model={self.model_kind} size={self.size} ({regs}, "
                f"pos-embed mode {self.pos_embed_mode!r})")

    def head_summary(self) -> str | None:
        """How the depth head type was decided, for printing; None for an encoder."""
        if self.dpt_cfg is None:
            return None
        head = self.dpt_cfg.head + (f" (max_depth={self.dpt_cfg.max_depth:g} m)"
                                    if self.dpt_cfg.head == "metric" else "")
        why = {"detected": "detected from the transformers config.json",
               "hf_default": "transformers' default: its config.json has no "
                             "depth_estimation_type",
               "given": "given by --head",
               "filename": "from the official Depth Anything V2 file name",
               "assumed": "ASSUMED: the weights do not say; for a metric Depth Anything V2 "
                          "model pass --head metric --max-depth M"}[self.head_source]
        scale = (f"; output x{self.output_scale:g} (config.json max_depth, as transformers' "
                 "relative head), folded into the last conv" if self.output_scale != 1.0 else "")
        return f"head={head}, {why}{scale}"

    def assumption_warning(self) -> str | None:
        """A warning block for stderr when the head type was assumed, else None."""
        if self.head_source != "assumed":
            return None
        rule = "WARNING: " + "=" * 70
        return "\n".join([
            rule,
            f"WARNING: depth head ASSUMED {self.dpt_cfg.head!r} (disparity): the weights do not",
            "WARNING: record it, and the file name is not an official Depth Anything V2 name.",
            "WARNING: A metric model converted as relative gives wrong outputs. For a metric",
            "WARNING: model convert again with --head metric --max-depth M (M = 20 for the",
            "WARNING: Hypersim (indoor) models, 80 for the Virtual KITTI (outdoor) ones), or",
            "WARNING: pass --head relative to state that it is relative.",
            rule])


def _matches(fmt: str, keys: set[str]) -> bool:
    anchor, prefixes = _SIGNATURES[fmt]
    return anchor in keys and any(k.startswith(prefixes) for k in keys)


def _key_sample(keys: list[str], n: int = 6) -> str:
    shown = sorted(keys)[:n]
    more = f" ... ({len(keys)} keys)" if len(keys) > n else ""
    return ", ".join(shown) + more


def detect_format(state_dict: Mapping[str, Any], source: str = "<state dict>") -> str:
    """One of `FORMATS`, or `UnknownFormatError` naming `source` and a few of its keys."""
    keys = set(state_dict)
    found = [fmt for fmt in _SIGNATURES if _matches(fmt, keys)]
    if found:
        return found[0]
    hint = ""
    if any(k.startswith("pretrained.") for k in keys):
        hint = " (it has 'pretrained.' keys but no 'depth_head.': a partial Depth Anything model?)"
    elif any(k.endswith("running_mean") for k in keys):
        hint = " (it has BatchNorm statistics: a convolutional network, not a ViT?)"
    raise UnknownFormatError(
        f"{source}: not a DINOv2 / Depth Anything V2 checkpoint{hint}; expected keys like "
        f"'patch_embed.proj.weight' + 'blocks.N.*' (DINOv2), 'pretrained.*' + 'depth_head.*' "
        f"(Depth Anything V2) or their transformers names. Unexpected keys: "
        f"{_key_sample(list(keys))}")


def check_format(fmt: str, state_dict: Mapping[str, Any], source: str = "<state dict>") -> str:
    """Validate a user-forced `fmt` ("auto" detects); errors name `source`."""
    if fmt == "auto":
        return detect_format(state_dict, source)
    if fmt not in FORMATS:
        raise CheckpointError(
            f"{source}: unknown format {fmt!r}; expected auto or one of {FORMATS}")
    if not _matches(fmt, set(state_dict)):
        anchor, prefixes = _SIGNATURES[fmt]
        raise UnknownFormatError(
            f"{source}: does not look like format {fmt!r} (needs {anchor!r} and keys starting "
            f"with {' or '.join(prefixes)}); its keys: {_key_sample(list(state_dict))}")
    return fmt


def size_name(encoder_cfg: Any) -> str:
    """DINOv2 size name whose ViT shape equals `encoder_cfg` (e.g. "vitb"), else "custom"."""
    fields = ("embed_dim", "depth", "num_heads", "ffn")
    for name in SIZE_NAMES:
        ref = configs.encoder_config(name)
        if all(encoder_cfg.get(f) == ref[f] for f in fields):
            return name
    return (f"custom(D={encoder_cfg.get('embed_dim')}, depth={encoder_cfg.get('depth')}, "
            f"heads={encoder_cfg.get('num_heads')})")


def default_pos_embed_mode(fmt: str, num_registers: int) -> str:
    """How the source interpolates position embeddings (docs/conversion.md, "What is detected"):
    "antialias" for any model with registers (original `_reg` models and transformers
    `Dinov2WithRegistersModel` both resize with `antialias=True`, to the target size), else
    "size" for transformers `Dinov2Model` (`size=`, no offset) and "offset" for the original
    layout (`interpolate_offset=0.1`). `keymaps.infer_config` uses this rule."""
    if num_registers:
        return "antialias"
    return "size" if fmt.endswith("_hf") else "offset"


def describe(fmt: str, encoder_cfg: Any, dpt_cfg: Any | None, head_source: str = "assumed",
             taps_source: str = "table", output_scale: float = 1.0) -> Detection:
    """Summarise an inferred configuration for printing and `conversion.json`."""
    regs = int(encoder_cfg.get("num_registers", 0) or 0)
    mode = encoder_cfg.get("pos_embed_mode") or default_pos_embed_mode(fmt, regs)
    return Detection(format=fmt, model_kind=MODEL_KIND[fmt], size=size_name(encoder_cfg),
                     num_registers=regs, pos_embed_mode=mode, encoder_cfg=encoder_cfg,
                     dpt_cfg=dpt_cfg, head_source=None if dpt_cfg is None else head_source,
                     taps_source=taps_source, output_scale=output_scale)
