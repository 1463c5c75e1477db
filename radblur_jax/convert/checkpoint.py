"""Converted checkpoint directories: convert, write atomically, load back in one call.

Layout of a converted checkpoint `DIR/`:
  config.json      {"radblur_jax_checkpoint": 1, "model": "dinov2" | "depth_anything",
                    "encoder": {...}, "dpt": {...} | null}
  conversion.json  source path, detected format and size, parameter and key counts
  params/          orbax (StandardCheckpointer) tree of float32 arrays, Flax `params` collection
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from radblur_jax.cli_args import output_dir_problem
from radblur_jax.convert import detect
from radblur_jax.convert.readers import CheckpointError, load_checkpoint
from radblur_jax.models.configs import DPT_HEADS
from radblur_jax.quiet_restore import quiet_restore

CHECKPOINT_VERSION = 1
MODEL_KINDS = ("dinov2", "depth_anything")


@dataclasses.dataclass
class ConversionResult:
    """What `convert_checkpoint` detected and wrote."""
    output: str
    detection: detect.Detection
    num_params: int
    num_source_keys: int
    num_param_arrays: int
    ignored_source_keys: list[str] = dataclasses.field(default_factory=list)


def _jsonable(tree: Any) -> Any:
    if isinstance(tree, ml_collections.ConfigDict):
        tree = tree.to_dict()
    if isinstance(tree, dict):
        return {k: _jsonable(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_jsonable(v) for v in tree]
    if isinstance(tree, np.generic):
        return tree.item()
    return tree


def _to_config(tree: dict[str, Any] | None) -> ml_collections.ConfigDict | None:
    """JSON dict -> ConfigDict with lists back to tuples (as `models.configs` builds them)."""
    if tree is None:
        return None
    return ml_collections.ConfigDict(
        {k: tuple(v) if isinstance(v, list) else v for k, v in tree.items()})


def count_params(params: Any) -> int:
    """Total number of scalars in a parameter tree."""
    return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def _check_destination(output: str, overwrite: bool) -> None:
    """CheckpointError unless `output` can be written: checked before the (long) conversion, so
    a bad `--output` fails at once. The parent must be a writable directory or creatable as one:
    the result is built in a temporary directory beside `output`."""
    if os.path.exists(output):
        if not os.path.isdir(output):
            raise CheckpointError(f"{output}: exists and is not a directory")
        if os.listdir(output) and not overwrite:
            raise CheckpointError(
                f"{output}: exists and is not empty (pass --overwrite to replace)")
    parent = os.path.dirname(output)
    problem = output_dir_problem(parent)
    if problem:
        raise CheckpointError(f"{output}: cannot be written: {parent} {problem}")


def _install(tmp: str, output: str) -> None:
    """Move the finished `tmp` directory to `output`, replacing what is there."""
    if not os.path.exists(output):
        os.replace(tmp, output)
        return
    trash = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.old-",
                             dir=os.path.dirname(output))
    old = os.path.join(trash, "old")
    os.replace(output, old)
    try:
        os.replace(tmp, output)
    except OSError:
        os.replace(old, output)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def save_converted(output: str | os.PathLike, params: Any, config: dict[str, Any],
                   info: dict[str, Any], *, overwrite: bool = False) -> str:
    """Write `params` + `config.json` + `conversion.json` to `output` atomically.

    Everything is built in a hidden temporary directory beside `output`, then moved into place;
    on any error nothing is left at `output` (an existing directory is kept unchanged). An
    OSError while writing (disk full, permissions) becomes a one-line CheckpointError.
    """
    output = os.path.abspath(os.fspath(output))
    _check_destination(output, overwrite)
    try:
        _save(output, params, config, info, overwrite)
    except OSError as e:
        raise CheckpointError(f"{output}: cannot write the checkpoint: {e}") from None
    return output


def _save(output: str, params: Any, config: dict[str, Any], info: dict[str, Any],
          overwrite: bool) -> None:
    import orbax.checkpoint as ocp

    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.tmp-", dir=parent)
    try:
        host = jax.tree.map(lambda x: np.asarray(x, dtype=np.float32), params)
        ckptr = ocp.StandardCheckpointer()
        try:
            ckptr.save(os.path.join(tmp, "params"), host)
            ckptr.wait_until_finished()
        finally:
            ckptr.close()
        for name, obj in (("config.json", config), ("conversion.json", info)):
            with open(os.path.join(tmp, name), "w") as f:
                json.dump(_jsonable(obj), f, indent=2, sort_keys=True)
                f.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; give it a normal dir's mode
        _check_destination(output, overwrite)
        _install(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def model_config(kind: str, encoder_cfg: Any, dpt_cfg: Any | None) -> dict[str, Any]:
    """The `config.json` content for a model of `kind` ("dinov2" or "depth_anything")."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {MODEL_KINDS}")
    return {"radblur_jax_checkpoint": CHECKPOINT_VERSION, "model": kind,
            "encoder": _jsonable(encoder_cfg),
            "dpt": _jsonable(dpt_cfg) if kind == "depth_anything" else None}


def build_model(config: dict[str, Any]) -> Any:
    """The Flax module described by a `config.json` dict: `DinoViT` or `DepthAnything`, computed
    with this platform's backend (`resolve_backend("auto")`)."""
    from radblur_jax.models.backends import resolve_backend
    encoder_cfg = _to_config(config["encoder"])
    if config["model"] == "dinov2":
        from radblur_jax.models.vit import DinoViT
        return DinoViT(encoder_cfg, resolve_backend())
    if config["model"] == "depth_anything":
        from radblur_jax.models.depth_anything import DepthAnything
        return DepthAnything(encoder_cfg, _to_config(config["dpt"]), resolve_backend())
    raise ValueError(f"unknown model kind {config['model']!r}; expected one of {MODEL_KINDS}")


def read_converted_config(path: str | os.PathLike) -> dict[str, Any]:
    """`config.json` of a converted checkpoint directory, validated."""
    path = os.fspath(path)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isdir(path) or not os.path.isfile(cfg_path) or not os.path.isdir(
            os.path.join(path, "params")):
        raise CheckpointError(
            f"{path}: not a converted radblur_jax checkpoint (expected config.json and params/; "
            "make one with tools/convert_weights.py)")
    try:
        with open(cfg_path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: unreadable: {e}") from None
    if config.get("radblur_jax_checkpoint") != CHECKPOINT_VERSION or config.get(
            "model") not in MODEL_KINDS:
        raise CheckpointError(
            f"{cfg_path}: not a radblur_jax checkpoint config (version "
            f"{config.get('radblur_jax_checkpoint')!r}, model {config.get('model')!r})")
    return config


def _expected_shapes(module: Any, config: dict[str, Any]) -> Any:
    side = 2 * int(config["encoder"]["patch_size"])
    x = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
    return jax.eval_shape(module.init, jax.random.PRNGKey(0), x)["params"]


def load_pretrained(path: str | os.PathLike, *, check_shapes: bool = True
                    ) -> tuple[Any, Any, dict[str, Any]]:
    """`(module, params, config)` from a converted checkpoint directory, in one call.

    `params` are float32 `jnp` arrays ready for `module.apply({"params": params}, x)`.
    """
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(path))
    config = read_converted_config(path)
    module = build_model(config)
    ckptr = ocp.StandardCheckpointer()
    try:
        with quiet_restore(path):
            restored = ckptr.restore(os.path.join(path, "params"))
    except Exception as e:
        raise CheckpointError(f"{path}/params: cannot restore parameters: {e}") from None
    finally:
        ckptr.close()
    if check_shapes:
        want = jax.tree.map(lambda s: tuple(s.shape), _expected_shapes(module, config))
        got = jax.tree.map(lambda a: tuple(np.shape(a)), restored)
        if want != got:
            flat_w = dict(jax.tree_util.tree_flatten_with_path(want)[0])
            flat_g = dict(jax.tree_util.tree_flatten_with_path(got)[0])
            diff = [jax.tree_util.keystr(k) for k in set(flat_w) ^ set(flat_g)]
            diff += [jax.tree_util.keystr(k) for k in set(flat_w) & set(flat_g)
                     if flat_w[k] != flat_g[k]]
            raise CheckpointError(
                f"{path}: parameters do not match the model in config.json: {sorted(diff)[:6]}")
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype=jnp.float32), restored)
    return module, params, config


def hf_hints(hf_config: dict[str, Any] | None, fmt: str) -> dict[str, Any]:
    """Facts a transformers `config.json` states that the weights cannot: heads, depth, taps,
    head type."""
    if not hf_config:
        return {}
    backbone = hf_config.get("backbone_config") or hf_config
    hints: dict[str, Any] = {}
    if backbone.get("num_attention_heads"):
        hints["num_heads"] = int(backbone["num_attention_heads"])
    if backbone.get("num_hidden_layers"):
        hints["depth"] = int(backbone["num_hidden_layers"])
    if fmt == "depth_anything_hf":
        if len(backbone.get("out_indices") or ()) == 4:
            hints["taps"] = tuple(int(i) - 1 for i in backbone["out_indices"])
        # transformers' DepthAnythingConfig defaults: depth_estimation_type "relative",
        # max_depth 1. Its head multiplies by max_depth for BOTH types: sigmoid * max_depth
        # (metric), relu * max_depth (relative). `_hf_max_depth` checks the value.
        kind = hf_config.get("depth_estimation_type")
        hints["head"] = "relative" if kind is None else kind
        hints["head_stated"] = kind is not None
        hints["max_depth"] = hf_config.get("max_depth")
    return hints


def scale_relative_output(params: Any, scale: float) -> Any:
    """`params` of a relative Depth Anything with its output multiplied by `scale` > 0.

    transformers' relative head ends in `relu(conv3(x)) * max_depth`; ours has no output scale,
    but relu is positively homogeneous, `relu(z) * s == relu(s * z)` for s > 0, so the scale
    folds exactly into the last convolution's kernel and bias (`output_conv2_2`)."""
    scratch = dict(params["depth_head"]["scratch"])
    scratch["output_conv2_2"] = {k: np.asarray(v, np.float32) * np.float32(scale)
                                 for k, v in scratch["output_conv2_2"].items()}
    return {**params, "depth_head": {**params["depth_head"], "scratch": scratch}}


def _hf_max_depth(source: str, hints: dict[str, Any]) -> float:
    """The factor a transformers Depth Anything head multiplies its output by: config.json's
    `max_depth`, 1 when absent or null (transformers 4 reads null as its default, 1). A value
    that is not a number > 0 is refused (transformers 4 reads 0 as 1, 5 as 0)."""
    value = hints.get("max_depth")
    if value is None:
        return 1.0
    try:
        scale = float(value)
    except (TypeError, ValueError):
        scale = float("nan")
    if not (scale > 0 and np.isfinite(scale)):
        why = ("the metric head's sigmoid is scaled by it" if hints["head"] == "metric" else
               "transformers multiplies the relative output by it, and a factor that is not > 0 "
               "cannot be carried (the relative head here has no output scale)")
        raise CheckpointError(f"{source}/config.json: max_depth={value!r} with "
                              f"depth_estimation_type {hints['head']}: expected a number > 0; "
                              f"{why}")
    return scale


def _check_head(source: str, head: str | None, max_depth: float | None) -> None:
    if head is not None and head not in DPT_HEADS:
        raise CheckpointError(f"{source}: head {head!r}: expected one of {', '.join(DPT_HEADS)}")
    if head == "metric" and (max_depth is None or not max_depth > 0):
        raise CheckpointError(f"{source}: head 'metric' needs max_depth > 0 (metres; Depth "
                              "Anything V2 metric models use 20 indoors, 80 outdoors)")
    if head != "metric" and max_depth is not None:
        raise CheckpointError(f"{source}: max_depth applies only to head 'metric'")


def _decide_head(source: str, dpt_cfg: Any, hints: dict[str, Any], head: str | None,
                 max_depth: float | None) -> tuple[str, float]:
    """Sets `dpt_cfg.head`/`max_depth`; returns (head_source, relative output scale)."""
    if head is not None:
        dpt_cfg.head, head_source = head, "given"
        if head == "metric":
            dpt_cfg.max_depth = float(max_depth)
    elif "head" in hints:
        if hints["head"] not in DPT_HEADS:
            raise CheckpointError(f"{source}/config.json: depth_estimation_type "
                                  f"{hints['head']!r}: expected one of {', '.join(DPT_HEADS)}")
        dpt_cfg.head = hints["head"]
        head_source = "detected" if hints["head_stated"] else "hf_default"
        if hints["head"] == "metric":
            dpt_cfg.max_depth = _hf_max_depth(source, hints)
    elif detect.head_from_name(source):
        dpt_cfg.head, named_max_depth = detect.head_from_name(source)
        head_source = "filename"
        if named_max_depth is not None:
            dpt_cfg.max_depth = named_max_depth
    else:
        head_source = "assumed"
    # A transformers relative head's max_depth scales its output too: carried into the weights.
    scale = 1.0
    if dpt_cfg.head == "relative" and hints.get("head") == "relative":
        scale = _hf_max_depth(source, hints)
    return head_source, scale


def convert_checkpoint(input: str | os.PathLike, output: str | os.PathLike, *,
                       format: str = "auto", overwrite: bool = False, head: str | None = None,
                       max_depth: float | None = None) -> ConversionResult:
    """Read a PyTorch checkpoint, detect its format and size, convert and write it to `output`.

    The depth head type (relative disparity or metric depth) is not in the weights: it comes
    from `head`/`max_depth` when given, else from a transformers `config.json`
    (`depth_estimation_type`, "relative" when absent as in transformers), else from an
    official Depth Anything V2 file name (`depth_anything_v2_metric_hypersim_vits.pth`: metric,
    20 m; `..._vkitti_...`: 80 m; `depth_anything_v2_vits.pth`: relative), else it is assumed
    relative (`detection.head_source` says which; `detection.assumption_warning()`). A
    transformers relative model's `max_depth` multiplies its output; a factor other than 1 is
    folded into the last convolution (`scale_relative_output`, recorded in conversion.json as
    `relative_output_scale`). Official Depth Anything V1 file names are refused.
    """
    from radblur_jax.convert import keymaps

    source = os.fspath(input)
    output = os.path.abspath(os.fspath(output))
    _check_head(source, head, max_depth)
    _check_destination(output, overwrite)
    detect.refuse_v1_name(source)
    loaded = load_checkpoint(source)
    fmt = detect.check_format(format, loaded.state_dict, source)
    hints = hf_hints(loaded.hf_config, fmt)
    try:
        params, encoder_cfg, dpt_cfg = keymaps.convert_state_dict(
            fmt, loaded.state_dict, num_heads=hints.get("num_heads"), taps=hints.get("taps"),
            depth=hints.get("depth"))
    except keymaps.ConversionError as e:
        raise CheckpointError(f"{source}: cannot convert: {e}") from None
    if dpt_cfg is None and head is not None:
        raise CheckpointError(f"{source}: a {fmt} encoder has no depth head; --head applies to "
                              "Depth Anything checkpoints only")
    head_source, scale = None, 1.0
    if dpt_cfg is not None:
        head_source, scale = _decide_head(source, dpt_cfg, hints, head, max_depth)
        if scale != 1.0:
            params = scale_relative_output(params, scale)
    taps_source = ("config.json" if "taps" in hints else "table"
                   if keymaps.preset_for(encoder_cfg.embed_dim, encoder_cfg.depth) else "guessed")
    detection = detect.describe(fmt, encoder_cfg, dpt_cfg, head_source, taps_source, scale)
    n_params = count_params(params)
    n_arrays = len(jax.tree.leaves(params))
    ignored = sorted(k for k in keymaps.to_original_keys(fmt, loaded.state_dict)
                     if keymaps.KNOWN_UNUSED.match(k))
    info = {
        "source": os.path.abspath(source), "format": fmt, "model": detection.model_kind,
        "size": detection.size, "num_registers": detection.num_registers,
        "pos_embed_mode": detection.pos_embed_mode, "num_params": n_params,
        "head": None if dpt_cfg is None else dpt_cfg.head,
        "max_depth": None if dpt_cfg is None or dpt_cfg.head != "metric" else dpt_cfg.max_depth,
        "head_source": detection.head_source, "relative_output_scale": scale,
        "taps_source": detection.taps_source,
        "num_source_keys": len(loaded.state_dict), "num_param_arrays": n_arrays,
        "ignored_source_keys": ignored,
        "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    config = model_config(detection.model_kind, encoder_cfg, dpt_cfg)
    save_converted(output, params, config, info, overwrite=overwrite)
    return ConversionResult(output, detection, n_params, len(loaded.state_dict), n_arrays,
                            ignored)
