"""Read PyTorch state dicts into `{key: np.ndarray}` without trusting pickles.

Sources: a `.pth`/`.pt`/`.bin` file (`torch.load(weights_only=True)`, torch imported lazily),
a `.safetensors` file (read by a small reader of the published format: no torch, bf16 works),
or a transformers model directory (`config.json` + `model.safetensors` / `pytorch_model.bin`,
sharded checkpoints through their `*.index.json`). Floating tensors come back as float32.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
from typing import Any

import ml_dtypes
import numpy as np

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model", "module")
_HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                    "pytorch_model.bin.index.json")
_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


class CheckpointError(ValueError):
    """A checkpoint could not be read, recognised or converted; the message names the file."""


@dataclasses.dataclass
class LoadedCheckpoint:
    """A state dict plus where it came from (and the HF `config.json` of a model directory)."""
    state_dict: dict[str, np.ndarray]
    source: str
    hf_config: dict[str, Any] | None = None


def _as_numpy(value: Any) -> np.ndarray:
    """Float tensors/arrays -> float32 ndarray; integer/bool buffers keep their dtype."""
    if hasattr(value, "detach"):  # torch.Tensor
        import torch
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.to(torch.float32)
        return value.numpy()
    arr = np.asarray(value)
    if np.issubdtype(arr.dtype, np.floating) or arr.dtype == ml_dtypes.bfloat16:
        return arr.astype(np.float32)
    return np.array(arr)


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and (hasattr(v, "detach") or isinstance(v, np.ndarray))
        for k, v in obj.items())


def unwrap_state_dict(obj: Any, source: str = "<state dict>") -> dict[str, Any]:
    """Peel `{"model": ...}` / `{"state_dict": ...}` wrappers and a common `module.` prefix."""
    for _ in range(4):
        if _is_tensor_dict(obj):
            break
        if isinstance(obj, dict):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is not None:
                obj = inner
                continue
        kind = type(obj).__name__
        keys = list(obj)[:5] if isinstance(obj, dict) else []
        raise CheckpointError(
            f"{source}: expected a state dict (name -> tensor), got a {kind}"
            + (f" with keys {keys}" if keys else ""))
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _torch_load(path: str) -> Any:
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(
            f"{path}: reading a PyTorch pickle needs torch (pip install 'radblur_jax[convert]' "
            "or torch==2.13.0); a .safetensors file needs no torch") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a pickle, disallowed globals...
        raise CheckpointError(
            f"{path}: cannot read PyTorch checkpoint (corrupt, truncated or not a weights-only "
            f"state dict): {type(e).__name__}: {_torch_error_summary(e)}") from None


def _first_sentence(text: str) -> str:
    return text.strip().split(". ")[0].rstrip(".")


def _torch_error_summary(error: Exception) -> str:
    """One line from a `torch.load` error: its first sentence, plus the weights-only
    unpickler's own line when there is one, which says what was refused ("Unsupported global:
    GLOBAL argparse.Namespace ..."). torch's advice in between (load with weights_only=False,
    or allowlist the global) is dropped: this reader never does either."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    summary = _first_sentence(text.split("\n")[0])
    cause = re.search(r"WeightsUnpickler error: [^\n]*", text)
    if cause:
        summary += ": " + _first_sentence(cause[0])
    return summary


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Read a `.safetensors` file into float32 (floats) / native (ints) numpy arrays."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("file shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise ValueError(f"header length {n} exceeds the file size {size}")
            header = json.loads(f.read(n))
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if size > 8 + n else None
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = np.dtype(_ST_DTYPES[info["dtype"]])
            begin, end = info["data_offsets"]
            if data is None or end > data.shape[0]:
                raise ValueError(f"tensor {name!r} ends at byte {end}, past the end of the data")
            shape = tuple(info["shape"])
            arr = np.frombuffer(data[begin:end], dtype=dtype).reshape(shape)
            out[name] = _as_numpy(arr)
        return out
    except (ValueError, KeyError, TypeError, OSError, struct.error) as e:
        raise CheckpointError(
            f"{path}: cannot read safetensors file (corrupt or truncated?): {e}") from None


def _read_file(path: str) -> dict[str, np.ndarray]:
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    if not path.endswith(TORCH_SUFFIXES):
        raise CheckpointError(
            f"{path}: unknown checkpoint file type; expected one of "
            f"{', '.join(TORCH_SUFFIXES + ('.safetensors',))} or a transformers model directory")
    sd = unwrap_state_dict(_torch_load(path), path)
    return {k: _as_numpy(v) for k, v in sd.items()}


def _read_hf_dir(path: str) -> LoadedCheckpoint:
    cfg_path = os.path.join(path, "config.json")
    try:
        with open(cfg_path) as f:
            hf_config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: cannot read transformers config: {e}") from None
    present = [n for n in _HF_WEIGHT_FILES if os.path.isfile(os.path.join(path, n))]
    if not present:
        raise CheckpointError(
            f"{path}: transformers directory without weights; expected one of "
            f"{', '.join(_HF_WEIGHT_FILES)}")
    name = present[0]
    if name.endswith(".index.json"):
        index_path = os.path.join(path, name)
        try:
            with open(index_path) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index_path}: cannot read shard index: {e}") from None
        sd: dict[str, np.ndarray] = {}
        for shard in shards:
            shard_path = os.path.join(path, shard)
            if not os.path.isfile(shard_path):
                raise CheckpointError(f"{index_path}: shard {shard} is missing")
            sd.update(_read_file(shard_path))
    else:
        sd = _read_file(os.path.join(path, name))
    return LoadedCheckpoint(sd, path, hf_config)


def load_checkpoint(path: str | os.PathLike) -> LoadedCheckpoint:
    """Read a checkpoint file or transformers model directory (see module docstring)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise CheckpointError(
                f"{path}: a directory must be a transformers model directory with config.json")
        return _read_hf_dir(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file or directory")
    return LoadedCheckpoint(_read_file(path), path)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """`{key: ndarray}` (floats as float32) from any source `load_checkpoint` accepts."""
    return load_checkpoint(path).state_dict
