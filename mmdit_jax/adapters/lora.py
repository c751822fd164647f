"""LoRA: low-rank adapters on the Dense kernels of any model family, as a transform of its parameter tree.

For an adapted Dense layer with kernel ``W (d_in, d_out)`` (Flax orientation, ``y = x W + b``)

    W' = W + s A B,        A (d_in, r),  B (r, d_out),  s = alpha / r

``B`` starts at zero, so a fresh adapter leaves the model unchanged (bit for bit: ``W + 0 = W``); ``A`` starts
as PEFT starts it (Kaiming-uniform with ``a = sqrt(5)``: ``U(-1/sqrt(d_in), 1/sqrt(d_in))``). The same adapter
in PEFT / diffusers files is ``lora_A.weight = A^T (r, d_in)`` and ``lora_B.weight = B^T (d_out, r)``
(``mmdit_jax.interop.lora``).

**The adapter tree** mirrors the model's ``params``: where the model has ``{"kernel", "bias"}`` for an adapted
module, the adapter has ``{"lora_A", "lora_B"}``; nothing else. Kernels of blocks stacked for ``nn.scan``
(``(L, d_in, d_out)``) get stacked factors ``(L, d_in, r)`` / ``(L, r, d_out)``, so the family's own
``stack_blocks`` / ``unstack_blocks`` convert an adapter between layouts as they convert parameters.

**Why adapt by merging** (``merge``, also inside the train step) rather than by a second product in every
adapted layer: it is one function of the parameter tree, so it works for every family of the registry
(unrolled or scanned blocks, any attention path) without touching a model; its cost is one ``(d_in, r) x
(r, d_out)`` product per adapted kernel per step, and the gradient of the frozen kernels is never formed (only
``dW' -> dA, dB``), so a LoRA step costs at most what a full fine-tuning step does and keeps optimizer state only
for ``A`` and ``B``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp

from mmdit_jax.checks import ConfigError, check_positive, check_positive_int

Array = jax.Array
Params = Mapping[str, Any]
Path = tuple[str, ...]

# The joint-attention projections of SD3 and FLUX in diffusers' names (``to_out.0`` is ``to_out`` here): the
# targets diffusers' SD3 DreamBooth-LoRA script adapts by default.
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """``rank`` r; ``alpha`` (None: equal to the rank, scale 1); ``targets``: regular expressions, each matched in
    full against an adapted module's name (``"to_q"``) or its ``/``-joined path (``"transformer_blocks_0/attn/to_q"``,
    ``".*ff/proj_in"``).

    Paths are those of the parameter layout: under ``scan_blocks`` a run of blocks is one stacked module
    (``scan_0_22/block/attn/to_q``), so a pattern selects whole runs there. A bare name matches wherever it occurs
    (``"proj_out"`` is also the model's final projection): anchor it with a path pattern to narrow it."""

    rank: int = 4
    alpha: float | None = None
    targets: tuple[str, ...] = ATTENTION_TARGETS

    @property
    def scale(self) -> float:
        return (self.rank if self.alpha is None else float(self.alpha)) / self.rank

    def validate(self) -> None:
        check_positive_int("lora.rank", self.rank)
        if self.alpha is not None:
            check_positive("lora.alpha", self.alpha)
        if isinstance(self.targets, str) or not self.targets:
            raise ConfigError(f"lora.targets={self.targets!r} is not valid; give a non-empty tuple of module-name "
                              f"patterns, e.g. {ATTENTION_TARGETS}")
        for pattern in self.targets:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(f"lora.targets: {pattern!r} is not a regular expression ({e})") from None


def _matches(path: Path, targets: Iterable[str]) -> bool:
    joined = "/".join(path)
    return any(re.fullmatch(p, path[-1]) or re.fullmatch(p, joined) for p in targets)


def _modules(params: Params, prefix: Path = ()) -> Iterable[tuple[Path, Mapping[str, Any]]]:
    for name, value in params.items():
        if isinstance(value, Mapping):
            if "kernel" in value and not isinstance(value["kernel"], Mapping):
                yield (*prefix, name), value
            yield from _modules(value, (*prefix, name))


def target_paths(params: Params, targets: Iterable[str]) -> list[Path]:
    """Paths of the modules with a ``kernel`` whose name or path matches ``targets``, in tree order.

    Raises ConfigError if none matches, or if a matching kernel is not a Dense kernel ``([L,] d_in, d_out)``.
    """
    targets = tuple(targets)
    paths = []
    for path, module in _modules(params):
        if _matches(path, targets):
            if len(module["kernel"].shape) not in (2, 3):
                raise ConfigError(f"lora.targets matches {'/'.join(path)}, whose kernel {tuple(module['kernel'].shape)} "
                                  "is not a Dense kernel (d_in, d_out) or a stack of them; narrow the pattern")
            paths.append(path)
    if not paths:
        names = sorted({p[-1] for p, _ in _modules(params)})
        raise ConfigError(f"lora.targets={targets} match no module; the model's module names are {names}")
    return paths


def _get(tree: Params, path: Path) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _set(tree: dict[str, Any], path: Path, value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def adapter_paths(adapter: Params, prefix: Path = ()) -> list[Path]:
    """Paths of the adapted modules of an adapter tree (the nodes holding ``lora_A`` / ``lora_B``)."""
    out = []
    for name, value in adapter.items():
        if isinstance(value, Mapping):
            out += [(*prefix, name)] if "lora_A" in value else adapter_paths(value, (*prefix, name))
    return out


def init_lora(key: Array, params: Params, config: LoraConfig) -> dict[str, Any]:
    """A fresh adapter for ``params`` (``A`` Kaiming-uniform as PEFT, ``B = 0``), float32, one key per module.

    ``params`` may be abstract (``jax.ShapeDtypeStruct`` leaves): only shapes are read.
    """
    config.validate()
    adapter: dict[str, Any] = {}
    for i, path in enumerate(target_paths(params, config.targets)):
        *stack, d_in, d_out = _get(params, path)["kernel"].shape
        bound = 1.0 / math.sqrt(d_in)
        a = jax.random.uniform(jax.random.fold_in(key, i), (*stack, d_in, config.rank), jnp.float32, -bound, bound)
        _set(adapter, path, {"lora_A": a, "lora_B": jnp.zeros((*stack, config.rank, d_out), jnp.float32)})
    return adapter


def delta(module: Mapping[str, Array], scale: float) -> Array:
    """``s A B``: ``([L,] d_in, d_out)`` in float32."""
    return scale * jnp.matmul(module["lora_A"].astype(jnp.float32), module["lora_B"].astype(jnp.float32))


def _apply(params: Params, adapter: Params, scale: float, sign: float) -> dict[str, Any]:
    out = jax.tree_util.tree_map(lambda x: x, dict(params))   # new containers, same leaves
    for path in adapter_paths(adapter):
        try:
            module = _get(out, path)
        except (KeyError, TypeError):
            raise ConfigError(f"the adapter has {'/'.join(path)}, which the model's parameters do not have "
                              "(an adapter of another model or block layout?)") from None
        kernel, d = module["kernel"], delta(_get(adapter, path), scale)
        if d.shape != kernel.shape:
            raise ConfigError(f"the adapter of {'/'.join(path)} is {tuple(d.shape)}, its kernel {tuple(kernel.shape)}")
        _set(out, path, {**module, "kernel": (kernel.astype(jnp.float32) + sign * d).astype(kernel.dtype)})
    return out


def merge(params: Params, adapter: Params, scale: float) -> dict[str, Any]:
    """``params`` with every adapted kernel replaced by ``W + s A B`` (kernel dtype kept). Pure; differentiable in
    ``adapter`` (the train step's parameters) and in ``params``."""
    return _apply(params, adapter, scale, 1.0)


def unmerge(params: Params, adapter: Params, scale: float) -> dict[str, Any]:
    """The inverse of ``merge`` (exact up to float rounding): ``W' - s A B``."""
    return _apply(params, adapter, scale, -1.0)
