"""Read and write safetensors state dicts as numpy arrays (bfloat16 via ml_dtypes), with no torch."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from mmdit_jax.checks import ConfigError
from mmdit_jax.reporting import one_line


def _read_file(path: str) -> dict[str, np.ndarray]:
    # framework="flax" reads bfloat16 too (numpy has no native bf16); arrays are converted to numpy at once.
    try:
        with safe_open(path, framework="flax") as f:
            return {k: np.asarray(f.get_tensor(k)) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:   # truncated, corrupt or not a safetensors file at all
        raise ConfigError(f"{path}: not a readable .safetensors file (truncated or corrupt? {one_line(e)})") from e


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A state dict from a ``.safetensors`` file, or a folder holding one file or a sharded ``*.index.json``."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return _read_file(path)
    if not os.path.isdir(path):
        raise ConfigError(f"checkpoint path {path!r} is neither a .safetensors file nor a folder")
    indexes = sorted(glob.glob(os.path.join(path, "*.safetensors.index.json")))
    if indexes:
        with open(indexes[0]) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(path, s) for s in shards]
    else:
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise ConfigError(f"no .safetensors files in {path!r}")
    if not indexes and len(files) > 1:
        raise ConfigError(f"{path!r} holds several .safetensors files and no index: {[os.path.basename(f) for f in files]}")
    sd: dict[str, np.ndarray] = {}
    for f in files:
        if not os.path.exists(f):
            raise ConfigError(f"shard {os.path.basename(f)} listed in the index is missing from {path!r}")
        sd.update(_read_file(f))
    return sd


def save_state_dict(sd: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write a state dict to one ``.safetensors`` file (atomically: temp file, then rename)."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, tmp)
    os.replace(tmp, path)


def check_safetensors_file(flag: str, path: str) -> None:
    """Raise ConfigError naming ``flag`` unless ``path`` (a ``.safetensors`` file) has a readable header and every
    tensor it lists lies within the file: a truncated download fails here, before any model is loaded."""
    try:
        with safe_open(path, framework="numpy") as f:
            for key in f.keys():
                f.get_slice(key)
        size = os.path.getsize(path)
        with open(path, "rb") as raw:
            header_len = int.from_bytes(raw.read(8), "little")
            header = json.loads(raw.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + header_len + end > size:
            raise ValueError(f"{size} bytes, the header lists {8 + header_len + end}")
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{flag}={path!r}: not a readable .safetensors file (truncated or corrupt? "
                          f"{one_line(e)})") from e
