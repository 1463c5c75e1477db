"""`make_source(config)`: a grain random-access source by dataset name; `resolve_spec(config)`
fills in the built-in synthetic set's root.

config fields (dict or ConfigDict): `name`, `root` (or `data_dir` for TFDS), `split`, plus the
dataset function's keyword arguments (e.g. `blur_dir`, `jpeg`, `variant`, `subset`,
`with_mask`, `list_file`, `skip_bad`). `dataset_spec` declares every option with its "unset"
value (`SPEC_OPTIONS`), as the configs hold them so the command line can set any; options at
that value are not passed on, and one the dataset does not take is an error naming it.
`format="tfds"` reads the project's TFDS builds (`gopro`, `synthetic`) from `data_dir`.
`raw=True` keeps integer images until after cropping (faster training; the pipeline converts
to float32).

Modules: `paired` (file records, listing helpers, `PairedSource`), `deblur` (one function per
deblurring layout), `depth` (RGB-D folders; the synthetic set as RGB-D), `tfds` (TFDS ArrayRecord
builds, NYU Depth v2).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from radblur_jax.data.sources import deblur, depth, tfds

# Blurred/sharp pairs (`blur`, `sharp`, ...) and RGB-D examples (`image`, `depth`, `valid`).
DEBLUR_NAMES = ("gopro", "hide", "reds", "rsblur", "realblur_j", "realblur_r", "paired_folder",
                "synthetic")
DEPTH_NAMES = ("synthetic_depth", "nyu_depth_v2", "depth_folder")
NAMES = DEBLUR_NAMES + DEPTH_NAMES

SYNTHETIC_NAMES = ("synthetic", "synthetic_depth")

_DEFAULT_SPLIT = {"hide": "test", "nyu_depth_v2": "train"}

_BUILDERS: dict[str, Callable[..., Any]] = {
    "gopro": deblur.gopro,
    "hide": deblur.hide,
    "reds": deblur.reds,
    "rsblur": deblur.rsblur,
    "realblur_j": lambda root, split, **kw: deblur.realblur(root, "J", split, **kw),
    "realblur_r": lambda root, split, **kw: deblur.realblur(root, "R", split, **kw),
    "paired_folder": lambda root, split, **kw: deblur.paired_folder(root, **kw),
    "synthetic": deblur.synthetic,
    "synthetic_depth": depth.SyntheticDepthSource,
    "depth_folder": lambda root, split, **kw: depth.DepthFolderSource(root, **kw),
}

_TFDS_NAMES = {"gopro": "radblur_gopro", "synthetic": "radblur_synthetic"}

# The functions whose keyword-only arguments are each dataset's options.
_OPTIONS_OF: dict[str, Callable[..., Any]] = {
    **{name: _BUILDERS[name] for name in ("gopro", "hide", "reds", "rsblur", "synthetic")},
    "realblur_j": deblur.realblur, "realblur_r": deblur.realblur,
    "paired_folder": deblur.paired_folder, "synthetic_depth": depth.SyntheticDepthSource,
    "depth_folder": depth.DepthFolderSource, "nyu_depth_v2": tfds.nyu_depth_v2,
}

# Every option a dataset spec may carry besides name, root and split, at the value that leaves
# the dataset's own default in place.
SPEC_OPTIONS: dict[str, Any] = dict(
    format="files", raw=False, skip_bad=False, blur_dir="", jpeg=False, variant="", subset="",
    with_mask=False, list_dir="", list_file="", input_dir="", target_dir="", image_dir="",
    depth_dir="", sharp_first=True, allow_gray=False, depth_scale=1.0)


def dataset_spec(name: str, root: str = "", split: str = "train") -> dict[str, Any]:
    """A dataset spec with every option of `SPEC_OPTIONS` declared at its unset value."""
    return dict(name=name, root=root, split=split, **SPEC_OPTIONS)


def _set_options(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """`cfg` without the options left at their unset value; ValueError naming an option that
    `name` does not take."""
    cfg = {k: v for k, v in cfg.items() if k not in SPEC_OPTIONS or v != SPEC_OPTIONS[k]}
    params = inspect.signature(_OPTIONS_OF[name]).parameters.values()
    takes = {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    takes |= {"root", "data_dir", "split", "format", "raw"}
    extra = sorted(set(cfg) - takes)
    if extra:
        raise ValueError(f"dataset {name!r} takes no option {extra[0]!r}; its options: "
                         f"{', '.join(sorted(takes - {'root', 'data_dir', 'split'}))}")
    return cfg


def resolve_spec(spec: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The dataset spec (dict or ConfigDict) as a dict; an empty `root` of a synthetic set (not
    the TFDS form) becomes the built-in set's directory, generated on first use."""
    out = dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)
    if (out.get("name") in SYNTHETIC_NAMES and not out.get("root")
            and out.get("format") != "tfds"):
        from radblur_jax.data.synthetic import ensure_default_synthetic
        out["root"] = str(ensure_default_synthetic())
    return out


def make_source(config: Mapping[str, Any] | Any) -> Any:
    """A source with `__len__`/`__getitem__` yielding example dicts (see this package's modules)."""
    cfg = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    name = cfg.pop("name")
    if name not in NAMES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {NAMES}")
    cfg = _set_options(name, cfg)
    split = cfg.pop("split", _DEFAULT_SPLIT.get(name, "train"))
    fmt = cfg.pop("format", "files")
    raw = cfg.pop("raw", False)
    if name == "nyu_depth_v2":
        return tfds.nyu_depth_v2(split, cfg.pop("data_dir", cfg.pop("root", None)))
    if fmt == "tfds":
        if name not in _TFDS_NAMES:
            raise ValueError(f"format='tfds' is available for {tuple(_TFDS_NAMES)}, not {name!r}")
        source = tfds.tfds_paired(_TFDS_NAMES[name], split,
                                          cfg.pop("data_dir", cfg.pop("root", None)))
        source.raw = raw
        return source
    if fmt != "files":
        raise ValueError(f"format {fmt!r} not in ('files', 'tfds')")
    root = cfg.pop("root", None)
    if root is None:
        raise ValueError(f"{name}: config needs `root`")
    source = _BUILDERS[name](root, split, **cfg)
    if raw and hasattr(source, "raw"):
        source.raw = True
    return source
