"""Fine-tuning a trained run: the ``finetune`` config section, the base weights, and how the trained parameters
compose with them.

    finetune.init_from      a training workdir (its EMA weights at one checkpoint step are the starting point), or a
                            checkpoint folder the family can read (a diffusers SD3 / FLUX.1 pipeline folder)
    finetune.lora.rank = 0  full fine-tuning: every parameter starts at the base weights, is trained and saved
    finetune.lora.rank > 0  LoRA (``mmdit_jax.adapters.lora``): the base weights stay frozen; only the adapter
                            ``{lora_A, lora_B}`` is trained, has optimizer state and is checkpointed
    finetune.lora.alpha     scale s = alpha / rank (0: alpha = rank, s = 1)
    finetune.lora.targets   module-name patterns (default: the joint-attention projections)
    finetune.text_encoder   also train the CLIP-L and CLIP-G towers (all their weights; T5 stays frozen, as in
                            diffusers' SD3 DreamBooth script); the state's trained tree is then
                            ``{"model": <params or adapter>, "text": {"clip_l": ..., "clip_g": ...}}``

The base checkpoint step is fixed when the run first starts and recorded in ``<workdir>/init_from.json``: a
resumed run and every later sampling of the workdir use that same base even if the base run trains on, and if
that checkpoint is gone they stop naming it instead of taking another.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax
import ml_collections

from mmdit_jax.adapters.lora import ATTENTION_TARGETS, LoraConfig, init_lora, merge
from mmdit_jax.adapters.widen import widen_inputs
from mmdit_jax.checkpoints import CheckpointError, checkpoint_steps, restore_params
from mmdit_jax.checks import ConfigError, check_keys
from mmdit_jax.reporting import write_text_atomic

Array = jax.Array
RECORD = "init_from.json"
# Sections a fine-tune must share with its base: they decide what the weights mean.
SHARED_SECTIONS = ("model", "text", "latent", "model_parameterization", "timestep_scale")


def finetune_config(init_from: str = "", rank: int = 0, alpha: float = 0.0,
                    targets: tuple[str, ...] = ATTENTION_TARGETS,
                    text_encoder: bool = False) -> ml_collections.ConfigDict:
    """The ``finetune`` section (rank 0: full fine-tuning; alpha 0: alpha = rank)."""
    lora = ml_collections.ConfigDict(dict(rank=rank, alpha=float(alpha), targets=tuple(targets)))
    return ml_collections.ConfigDict(dict(init_from=init_from, lora=lora, text_encoder=text_encoder))


def trains_text_encoder(config: Any) -> bool:
    """Whether the run trains the CLIP towers too (``finetune.text_encoder``)."""
    return "finetune" in config and bool(config.finetune.get("text_encoder", False))


def lora_config(config: Any) -> LoraConfig | None:
    """The run's ``LoraConfig``, or None for a run without LoRA."""
    if "finetune" not in config or not config.finetune.lora.rank:
        return None
    lora = config.finetune.lora
    return LoraConfig(rank=int(lora.rank), alpha=float(lora.alpha) if lora.alpha else None,
                      targets=tuple(lora.targets))


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value.to_dict() if hasattr(value, "to_dict") else value, default=list))


def is_checkpoint_folder(path: str) -> bool:
    """A released-model folder (a diffusers pipeline folder, or a model folder with its weights) rather than a
    training workdir of this package."""
    if os.path.isfile(os.path.join(path, "model_index.json")):
        return True
    return os.path.isfile(os.path.join(path, "config.json")) and not os.path.isdir(os.path.join(path, "checkpoints"))


def validate_finetune_config(config: Any, base_model: dict[str, Any] | None = None) -> None:
    """Raise ConfigError naming the first invalid ``finetune`` field (a no-op without the section).

    ``base_model``: the ``model`` section the base run must have (default: the run's own; a training task whose
    model reads a wider input than its text-to-image base says which, ``setup.tasks.TrainingTask.base_model``)."""
    if "finetune" not in config:
        return
    ft = config.finetune
    check_keys("finetune", ft.keys(), {"init_from", "lora", "text_encoder"})
    if not isinstance(ft.get("text_encoder", False), bool):
        raise ConfigError(f"finetune.text_encoder={ft.text_encoder!r} is not valid; choose True or False")
    if trains_text_encoder(config) and "text" not in config:
        raise ConfigError("finetune.text_encoder=True needs a text-conditioned run (a text section)")
    check_keys("finetune.lora", ft.lora.keys(), {"rank", "alpha", "targets"})
    rank = ft.lora.rank
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
        raise ConfigError(f"finetune.lora.rank={rank!r} is not valid; choose 0 (full fine-tuning) or a rank >= 1")
    lora = lora_config(config)
    if lora is not None:
        lora.validate()
        if not ft.init_from:
            raise ConfigError("finetune.lora.rank > 0 needs finetune.init_from: the workdir of the run to adapt")
    if ft.init_from and not os.path.isdir(ft.init_from):
        raise ConfigError(f"finetune.init_from={ft.init_from!r} is not a folder; give the workdir of a trained run "
                          "or a diffusers checkpoint folder")
    if ft.init_from and not is_checkpoint_folder(ft.init_from):
        base = base_config(ft.init_from)
        if base.get("finetune", {}).get("text_encoder", False):
            raise ConfigError(f"finetune.init_from={ft.init_from!r} trained its text encoders too; starting from such a "
                              "run is not supported (its weights need its own text path)")
        mine = {s: config.get(s) for s in SHARED_SECTIONS}
        if base_model is not None:
            mine["model"] = base_model
        differ = [s for s in SHARED_SECTIONS if _plain(mine[s]) != _plain(base.get(s))]
        if differ:
            raise ConfigError(f"the sections {differ} differ from those of finetune.init_from={ft.init_from!r}; a "
                              "fine-tune keeps its base's model, text encoders, latent space and parameterization")


def base_config(init_from: str) -> Any:
    """The config the base run ``init_from`` saved (``<init_from>/config.json``; validated when that run started)."""
    path = os.path.join(init_from, "config.json")
    if not os.path.isdir(init_from):
        raise ConfigError(f"finetune.init_from={init_from!r} is not a folder; give the workdir of a trained run")
    if not os.path.isfile(path):
        raise ConfigError(f"finetune.init_from={init_from!r} has no config.json: it is not a training workdir")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


@dataclasses.dataclass
class Finetune:
    """A fine-tune's base weights and the composition ``params = compose(base, trained)``."""

    base: Any                    # the base run's EMA params at ``base_step``
    base_workdir: str
    base_step: int
    lora: LoraConfig | None      # None: full fine-tuning

    def initial_trainable(self, key: Array) -> Any:
        """What the optimizer trains: a fresh adapter (LoRA) or the base weights themselves."""
        return self.base if self.lora is None else init_lora(key, self.base, self.lora)

    @property
    def frozen(self) -> Any:
        """The weights held fixed in the train step (None for full fine-tuning)."""
        return None if self.lora is None else self.base

    def compose(self, frozen: Any, trainable: Any) -> Any:
        """The model's params from the frozen base and the trained tree (``W + s A B`` under LoRA)."""
        return trainable if self.lora is None else merge(frozen, trainable, self.lora.scale)


def _base_step(config: Any, workdir: str, record: bool) -> tuple[str, int]:
    base = os.path.abspath(config.finetune.init_from)
    path = os.path.join(workdir, RECORD)
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        if saved["workdir"] != base:
            raise ConfigError(f"finetune.init_from={base!r}, but this run started from {saved['workdir']!r} "
                              f"(recorded in {path}); use a new workdir to fine-tune another base")
        return base, int(saved["step"])
    steps = checkpoint_steps(os.path.join(base, "checkpoints"))
    if not steps:
        raise CheckpointError(f"finetune.init_from={base!r} has no checkpoint to start from; train it first")
    if record:
        write_text_atomic(path, json.dumps({"workdir": base, "step": steps[-1]}, indent=1))
    return base, steps[-1]


def load_finetune(config: Any, workdir: str, abstract_params: Any, record: bool,
                  load_checkpoint: Callable[[str], Any] | None = None,
                  base_abstract: Any = None) -> Finetune | None:
    """The run's ``Finetune`` (None without ``finetune.init_from``). ``abstract_params``: shapes, dtypes and
    shardings of the model's params. ``record``: a training start writes ``init_from.json`` if absent; inference
    (``record=False``) only reads it, and without it uses the base's newest checkpoint. ``base_abstract``: the
    base's params where they differ from the run's (a widened input projection); the base is
    then widened with zero rows to ``abstract_params`` (``mmdit_jax.adapters.widen``).

    A checkpoint folder as ``init_from`` (``is_checkpoint_folder``) is read by ``load_checkpoint(folder) ->
    params`` (the family's converter); its parameters must have the run's shapes (its step is reported as 0)."""
    if "finetune" not in config or not config.finetune.init_from:
        return None
    folder = os.path.abspath(config.finetune.init_from)
    if base_abstract is not None:
        base = load_finetune(config, workdir, base_abstract, record, load_checkpoint)
        widened = widen_inputs(base.base, abstract_params)
        widened = jax.tree_util.tree_map(lambda p, a: jax.device_put(p, getattr(a, "sharding", None)),
                                         widened, abstract_params)
        return dataclasses.replace(base, base=widened)
    if is_checkpoint_folder(folder):
        if load_checkpoint is None:
            raise ConfigError(f"finetune.init_from={folder!r} is a checkpoint folder, which this model family "
                              "cannot read (no converter); give a training workdir")
        params = load_checkpoint(folder)
        _check_shapes(folder, params, abstract_params)
        params = jax.tree_util.tree_map(lambda p, a: jax.device_put(p, getattr(a, "sharding", None)),
                                        params, abstract_params)
        return Finetune(params, folder, 0, lora_config(config))
    base_dir, step = _base_step(config, os.path.abspath(workdir), record)
    _, params = restore_params(os.path.join(base_dir, "checkpoints"), abstract_params, step=step)
    return Finetune(params, base_dir, step, lora_config(config))


def _check_shapes(folder: str, params: Any, abstract_params: Any) -> None:
    got = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    want = {jax.tree_util.keystr(p): tuple(x.shape)
            for p, x in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}
    differ = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    if differ:
        raise ConfigError(f"the checkpoint in finetune.init_from={folder!r} does not fit the run's model section: "
                          + ", ".join(f"{k}: checkpoint {got.get(k)}, model {want.get(k)}" for k in differ[:5])
                          + (" ..." if len(differ) > 5 else ""))
