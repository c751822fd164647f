"""LoRA adapters (``mmdit_jax.adapters.lora``) <-> PEFT / diffusers LoRA files. numpy only, no torch.

Key format (diffusers' ``save_lora_weights`` of a transformer, PEFT names under the ``transformer.`` prefix)::

    transformer.{module}.lora_A.weight   (r, d_in)  = A^T
    transformer.{module}.lora_B.weight   (d_out, r) = B^T

``{module}`` is the diffusers module name (``transformer_blocks.0.attn.to_out.0``,
``single_transformer_blocks.1.proj_mlp``) of the Flax module our adapter adapts; the mapping is the family's
checkpoint mapping inverted over its Linear weights, as the family provides it (``Family.lora_layout``:
``LoraLayout``).

**Scale on export: folded into B** (``lora_B.weight = (s B)^T``, no alpha written). diffusers sets the PEFT
``lora_alpha`` from a file's ``lora_adapter_metadata`` only when reading a safetensors file
(``loaders/lora_base.py::_fetch_state_dict`` -> ``_load_sft_state_dict_metadata``); for a state dict in memory and
for files without it ``utils/peft_utils.py::get_peft_kwargs`` sets ``lora_alpha = r`` (scale 1). With the scale
folded, every such path (and any reader taking a missing alpha as ``r``) gives ``W + s A B``. The cost: the factors
come back as ``(A, s B)`` with scale 1.

**Alpha on import**, per module, the first that exists: a ``{module}.alpha`` key (kohya's convention, which
diffusers' FLUX loader reads; its SD3 loader ignores it); the PEFT config in the file's metadata (``lora_alpha``,
``alpha_pattern``, ``use_rslora``: ``s = alpha / sqrt(r)``), as diffusers reads it; else ``alpha = r``. One scale
for all modules is returned as the adapter's scale with the factors unchanged; differing scales are folded into each
module's B and the scale is 1.
"""

from __future__ import annotations

import functools
import json
import math
import operator
import os
import re
from typing import Any, Callable, Mapping, NamedTuple

import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from mmdit_jax.adapters.lora import adapter_paths
from mmdit_jax.checks import ConfigError

StateDict = dict[str, np.ndarray]
Path = tuple[str, ...]
WEIGHT_NAME = "pytorch_lora_weights.safetensors"     # diffusers' LORA_WEIGHT_NAME_SAFE
_KEY = re.compile(r"(?P<module>.+)\.(?P<kind>lora_A\.weight|lora_B\.weight|alpha)")


class LoraLayout(NamedTuple):
    """How a family's parameters meet diffusers' module names: what ``Family.lora_layout()`` returns (each family
    provides its own, so a new family needs no edit here)."""

    keys: Callable[[Any], list[str]]                 # config -> diffusers state-dict keys
    path: Callable[[str], Path | None]               # diffusers key -> path in params (None: not a parameter)
    stack: Callable[[dict, Any], dict]               # unrolled -> scanned variables (``scan_blocks``)
    unstack: Callable[[dict, Any], dict]             # scanned -> unrolled variables
    groups: Callable[[Any], list[list[str]]]         # config -> names of the unrolled blocks stacked together
    stacked: Callable[[Any], list[str]]              # config -> names of the stacked subtrees


def _layout(family: Any) -> LoraLayout:
    """The layout of ``family`` (a family class or instance: anything with ``name`` and ``lora_layout()``)."""
    layout = family.lora_layout()
    if layout is None:
        raise ConfigError(f"model.name={family.name!r} has no diffusers LoRA format (its Family.lora_layout() gives "
                          "none); LoRA files are read and written for families that define one (sd3, flux)")
    return layout


def _linear_modules(layout: LoraLayout, cfg: Any) -> dict[Path, str]:
    """Flax module path (unrolled layout) -> diffusers module name, for every Linear layer of the model."""
    out = {}
    for key in layout.keys(cfg):
        path = layout.path(key)
        if key.endswith(".weight") and path is not None and path[-1] == "kernel" and key != "pos_embed.proj.weight":
            out[path[:-1]] = key.removesuffix(".weight")
    return out


def _prune(tree: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: _prune(v) if isinstance(v, Mapping) else v for k, v in tree.items()}
    return {k: v for k, v in out.items() if not (isinstance(v, dict) and not v)}


def _tree(flat: Mapping[Path, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in flat.items():
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _unrolled(layout: LoraLayout, cfg: Any, adapter: Mapping[str, Any]) -> dict[str, Any]:
    if not any(name in adapter for name in layout.stacked(cfg)):
        return dict(adapter)
    # the family's unstack expects every stacked subtree; an adapter may adapt modules of only some
    params = {**{name: {"block": {}} for name in layout.stacked(cfg)}, **adapter}
    return _prune(layout.unstack({"params": params}, cfg)["params"])


def to_diffusers_lora(family: Any, model_config: Any, adapter: Mapping[str, Any], scale: float) -> StateDict:
    """PEFT / diffusers LoRA state dict (float32, ``transformer.`` prefix, ``s`` folded into ``lora_B``) of an
    adapter in either block layout; ``family``: a family class or instance (``mmdit_jax.families``). Raises ConfigError for an
    adapted module diffusers has no Linear for."""
    layout = _layout(family)
    family_name = family.name
    names = _linear_modules(layout, model_config)
    unrolled = _unrolled(layout, model_config, adapter)
    sd: StateDict = {}
    for path in adapter_paths(unrolled):
        if path not in names:
            raise ConfigError(f"the adapter has {'/'.join(path)}, which is no Linear layer of this {family_name} "
                              f"model in diffusers; adaptable modules: {_patterns(names.values())}")
        module = functools.reduce(operator.getitem, path, unrolled)
        a, b = np.asarray(module["lora_A"], np.float32), np.asarray(module["lora_B"], np.float32)
        sd[f"transformer.{names[path]}.lora_A.weight"] = np.ascontiguousarray(a.T)
        sd[f"transformer.{names[path]}.lora_B.weight"] = np.ascontiguousarray((np.float32(scale) * b).T)
    return sd


def _patterns(names: Any) -> list[str]:
    return sorted({re.sub(r"blocks\.\d+\.", "blocks.{i}.", n) for n in names})


def _peft_config(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The transformer's PEFT ``LoraConfig`` fields from file metadata (``load_lora``) or from such a dict."""
    if not metadata:
        return None
    conf = json.loads(metadata["lora_adapter_metadata"]) if "lora_adapter_metadata" in metadata else dict(metadata)
    conf = {k.removeprefix("transformer."): v for k, v in conf.items()}
    if "lora_alpha" not in conf:
        return None
    if conf.get("use_dora"):
        raise ConfigError("the LoRA metadata says use_dora=True; DoRA adapters cannot be loaded as LoRA")
    return conf


def _alpha(conf: Mapping[str, Any], module: str) -> float:
    for pattern, alpha in (conf.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):         # PEFT's get_pattern_key
            return float(alpha)
    return float(conf["lora_alpha"])


def from_diffusers_lora(family: Any, model_config: Any, state_dict: Mapping[str, Any],
                        metadata: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], float]:
    """``(adapter, scale)`` from a PEFT / diffusers LoRA state dict (``transformer.`` prefix optional), in the
    config's block layout (``scan_blocks``); ``family``: a family class or instance (``mmdit_jax.families``). ``metadata``:
    ``load_lora``'s file metadata, or a PEFT config dict.

    Under ``scan_blocks``, blocks of a stacked run that the file leaves unadapted get zero factors and ranks within
    a run are zero-padded to the largest (both leave ``W + s A B`` unchanged; zero factors get zero gradients).
    Raises ConfigError for keys that name no Linear layer of the model, or malformed factors.
    """
    layout = _layout(family)
    family_name = family.name
    paths = {name: path for path, name in _linear_modules(layout, model_config).items()}
    found: dict[str, dict[str, np.ndarray]] = {}
    unknown = []
    for key, value in state_dict.items():
        m = _KEY.fullmatch(key.removeprefix("base_model.model.").removeprefix("transformer."))
        if m is None or m["module"] not in paths:
            unknown.append(key)
        else:
            found.setdefault(m["module"], {})[m["kind"].split(".")[0]] = np.asarray(value, np.float32)
    if unknown or not found:
        raise ConfigError(f"LoRA keys {unknown[:5]}{' ...' if len(unknown) > 5 else ''} name no Linear layer of this "
                          f"{family_name} model (or the state dict has no lora_A/lora_B keys); adaptable modules: "
                          f"{_patterns(paths)}")
    conf = _peft_config(metadata)
    factors, scales = {}, {}
    for name, f in found.items():
        if "lora_A" not in f or "lora_B" not in f or f["lora_A"].ndim != 2 or f["lora_B"].ndim != 2 \
                or f["lora_A"].shape[0] != f["lora_B"].shape[1]:
            raise ConfigError(f"LoRA module {name} needs lora_A.weight (r, d_in) and lora_B.weight (d_out, r), got "
                              f"{ {k: v.shape for k, v in f.items()} }")
        r = f["lora_A"].shape[0]
        alpha = float(f["alpha"]) if "alpha" in f else _alpha(conf, name) if conf else float(r)
        scales[name] = alpha / (math.sqrt(r) if conf and conf.get("use_rslora") else r)
        factors[name] = (f["lora_A"].T, f["lora_B"].T)
    shared = len(set(scales.values())) == 1
    scale = next(iter(scales.values())) if shared else 1.0
    flat = {paths[n]: (a, b if shared else np.float32(scales[n]) * b) for n, (a, b) in factors.items()}
    if model_config.scan_blocks:
        flat = _pad_runs(layout.groups(model_config), flat)
    adapter = _tree({(*p, k): jnp.asarray(v) for p, ab in flat.items() for k, v in zip(("lora_A", "lora_B"), ab)})
    if model_config.scan_blocks:
        names = [n for g in layout.groups(model_config) for n in g]
        adapter = _prune(layout.stack({"params": {**{n: {} for n in names}, **adapter}}, model_config)["params"])
    return adapter, scale


def _pad_runs(groups: list[list[str]], flat: dict[Path, tuple]) -> dict[Path, tuple]:
    """Every block of a stacked run adapted alike: same modules, same rank (zeros where the file has none)."""
    out = dict(flat)
    for names in groups:
        rests = {p[1:] for p in flat if p[0] in names}
        for rest in rests:
            present = [flat[(n, *rest)] for n in names if (n, *rest) in flat]
            r = max(a.shape[1] for a, _ in present)
            (d_in, _), (_, d_out) = present[0][0].shape, present[0][1].shape
            for n in names:
                a, b = flat.get((n, *rest), (np.zeros((d_in, 0), np.float32), np.zeros((0, d_out), np.float32)))
                out[(n, *rest)] = (np.pad(a, ((0, 0), (0, r - a.shape[1]))), np.pad(b, ((0, r - b.shape[0]), (0, 0))))
    return out


def _file(path: str, writing: bool) -> str:
    if path.endswith(".safetensors") and not os.path.isdir(path):
        return path
    if writing or os.path.exists(os.path.join(path, WEIGHT_NAME)):
        return os.path.join(path, WEIGHT_NAME)
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors")) if os.path.isdir(path) else []
    if len(files) != 1:
        raise ConfigError(f"LoRA path {path!r}: expected a .safetensors file or a folder with {WEIGHT_NAME} or one "
                          f".safetensors file, found {files}")
    return os.path.join(path, files[0])


def save_lora(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray],
              metadata: Mapping[str, str] | None = None) -> str:
    """Write a LoRA state dict to a ``.safetensors`` file, or into a folder as ``pytorch_lora_weights.safetensors``
    (what ``pipe.load_lora_weights(folder)`` looks for), atomically; returns the file's path."""
    file = _file(os.fspath(path), writing=True)
    os.makedirs(os.path.dirname(file) or ".", exist_ok=True)
    tmp = file + ".tmp"
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, tmp, {"format": "pt", **(metadata or {})})
    os.replace(tmp, file)
    return file


def load_lora(path: str | os.PathLike) -> tuple[StateDict, dict[str, str]]:
    """``(state_dict, metadata)`` of a LoRA ``.safetensors`` file or folder; ``metadata`` is the file's header
    metadata (diffusers' ``lora_adapter_metadata`` JSON among it when diffusers wrote it), ``{}`` if none."""
    with safe_open(_file(os.fspath(path), writing=False), framework="flax") as f:
        return {k: np.asarray(f.get_tensor(k)) for k in f.keys()}, dict(f.metadata() or {})
