"""Training tasks: what kind of run a config describes, chosen once, and everything training asks of that kind.

    task            its section   examples                            conditions besides the text          picture
    text_to_image   (none)        images, or any example not a clip   none                                 grid
    editing         ``edit``      (source, instruction, target)       the source: ``reference``/``concat``  edits
    video           ``video``     clips ``(T, H, W, C)``              next_chunk: ``context_frames``       clips

``training_task(config)`` picks the task whose section the config has; without one, the first registered task
that claims the data's examples (clips: ``video``, trained jointly; anything else: ``text_to_image``). A task is
built from its own section alone (``from_section``, which checks that section's keys and values) and checks the
rest of the run through ``RunFacts``, the few facts of other sections it may read, gathered once. Training then
asks the task, never the config, for the images each example brings (``image_conditions``), their dropout, the
view of each batch the model trains on (``view``), the shape one sampler call draws, the model section of its
text-to-image base (a channel-concatenating editor reads a wider input than its base) and which sample picture
the run draws (``picture``, a name ``train.pictures`` resolves). Fine-tuning (full, LoRA, DreamBooth) is a way
of starting any task, configured by the ``finetune`` and ``dreambooth`` sections, not a task.

A task from outside the package registers with ``register_training_task`` (a subclass naming its section).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import jax

from mmdit_jax.checks import ConfigError
from mmdit_jax.data.registry import dataset_spec
from mmdit_jax.setup import editing, video

Array = jax.Array
Dropout = Callable[[Array, dict[str, Array]], dict[str, Array]]


@dataclasses.dataclass(frozen=True)
class RunFacts:
    """What a task may read of the run's other sections (``run_facts``)."""

    data_name: str
    data_shape: tuple[int, ...]                   # one example, pixel space ``(H, W, C)`` / ``(T, H, W, C)``
    data_conditions: bool                         # the data set gives each example images besides its target
    latent: bool                                  # trained on a VAE's latents (``latent.vae``)
    text: bool                                    # the config has a ``text`` section
    model: dict[str, Any]                         # the ``model`` section
    lora_rank: int                                # ``finetune.lora.rank`` (0: no LoRA)


def run_facts(config: Any) -> RunFacts:
    """The ``RunFacts`` of a config whose ``data`` section is valid."""
    spec = dataset_spec(config.data.name)
    latent = config.get("latent") is not None and bool(config.latent.get("vae"))
    rank = int(config.finetune.lora.rank) if "finetune" in config else 0
    return RunFacts(config.data.name, tuple(spec.example_shape(config.data)), spec.conditions is not None, latent,
                    "text" in config, dict(config.model), rank)


class TrainingTask:
    """A kind of training run, built from its config section. Subclasses set ``name``, ``section`` (None: the task
    has none) and ``picture``, and override what differs from text-to-image."""

    name: ClassVar[str]
    section: ClassVar[str | None] = None
    picture: ClassVar[str] = "grid"

    @classmethod
    def claims(cls, data_shape: tuple[int, ...]) -> bool:
        """Whether a config without any task's section is this task, given its examples' shape."""
        return False

    @classmethod
    def from_section(cls, section: Any) -> "TrainingTask":
        """The task of a config with this section (None: the config has none); raises ConfigError naming the
        first invalid field of the section."""
        return cls()

    def check_run(self, facts: RunFacts) -> None:
        """Raise ConfigError when the rest of the run does not fit the task. The default: the model reads its input
        as wide as its output (``input_channels``)."""
        model = facts.model
        if "in_channels" in model and "out_channels" in model:
            want = self.input_channels(int(model["out_channels"]))
            if int(model["in_channels"]) != want:
                raise ConfigError(self._channels_message(int(model["in_channels"]), int(model["out_channels"])))

    def _channels_message(self, inp: int, out: int) -> str:
        return (f"model.in_channels={inp} differs from model.out_channels={out}: a model that reads an image "
                "concatenated to its input needs edit.mode='channel_concat'")

    def input_channels(self, out_channels: int) -> int:
        """The channels of the model's input for ``out_channels`` of output."""
        return out_channels

    def image_conditions(self) -> dict[str, str]:
        """``{data condition: conditioning entry}``: the images each example brings besides its text."""
        return {}

    def dropout(self) -> Dropout | None:
        """The task's own conditioning dropout (after the text's), or None."""
        return None

    def view(self) -> Callable[[Array, Array, dict], tuple[Array, dict]] | None:
        """``view(key, x, cond) -> (x, cond)``: what the model trains on of each batch (None: the batch itself)."""
        return None

    def sample_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape one sampler call draws (no batch axis)."""
        return tuple(data_shape)

    def base_model(self, model: dict[str, Any]) -> dict[str, Any]:
        """The ``model`` section of the text-to-image run this task's model starts from (a fine-tune's base)."""
        return dict(model)


class TextToImage(TrainingTask):
    """Images (or any example not a clip), conditioned on text or on nothing."""

    name = "text_to_image"

    @classmethod
    def claims(cls, data_shape: tuple[int, ...]) -> bool:
        return len(data_shape) != 4


@dataclasses.dataclass(frozen=True)
class Editing(TrainingTask):
    """Instruction editing (``setup.editing``): each example's source image is a condition of its target."""

    mode: str = "in_context"
    image_drop_prob: float = 0.0
    image_guidance_scale: float = 1.5
    name: ClassVar[str] = "editing"
    section: ClassVar[str] = "edit"
    picture: ClassVar[str] = "edits"

    @classmethod
    def from_section(cls, section: Any) -> "Editing":
        editing.check_edit_section(section)
        return cls(section.mode, float(section.image_drop_prob), float(section.image_guidance_scale))

    def check_run(self, facts: RunFacts) -> None:
        editing.check_edit_run(self.mode, facts.data_name, facts.data_conditions, facts.latent, facts.text,
                               facts.lora_rank)
        super().check_run(facts)

    def _channels_message(self, inp: int, out: int) -> str:
        concat = self.mode == "channel_concat"
        return (f"edit.mode={self.mode!r} needs model.in_channels = {'2x ' if concat else ''}model.out_channels "
                f"({out}); got in_channels={inp}")

    def input_channels(self, out_channels: int) -> int:
        return 2 * out_channels if self.mode == "channel_concat" else out_channels

    def image_conditions(self) -> dict[str, str]:
        return {editing.SOURCE: editing.MODES[self.mode]}

    def dropout(self) -> Dropout | None:
        return editing.image_dropout(self.image_drop_prob) if self.image_drop_prob else None

    def base_model(self, model: dict[str, Any]) -> dict[str, Any]:
        return {**model, "in_channels": model["out_channels"]} if self.mode == "channel_concat" else dict(model)


@dataclasses.dataclass(frozen=True)
class Video(TrainingTask):
    """Text-to-video on clips (``setup.video``): jointly, or frame by frame with context frames."""

    mode: str = "joint"
    context_frames: int = 2
    chunk_frames: int = 2
    name: ClassVar[str] = "video"
    section: ClassVar[str] = "video"
    picture: ClassVar[str] = "clips"

    @classmethod
    def claims(cls, data_shape: tuple[int, ...]) -> bool:
        return len(data_shape) == 4

    @classmethod
    def from_section(cls, section: Any) -> "Video":
        if section is None:    # clips without the section train jointly
            return cls()
        video.check_video_section(section)
        return cls(section.mode, int(section.context_frames), int(section.chunk_frames))

    def check_run(self, facts: RunFacts) -> None:
        video.check_video_run(self.mode, self.context_frames, self.chunk_frames, facts.data_name, facts.data_shape,
                              facts.latent, int(facts.model.get("temporal_patch_size", 1)))
        super().check_run(facts)

    def view(self) -> Callable[[Array, Array, dict], tuple[Array, dict]] | None:
        if self.mode != "next_chunk":
            return None
        return video.window_view(self.context_frames, self.chunk_frames)

    def sample_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.mode == "next_chunk":
            return (self.chunk_frames, *data_shape[1:])
        return tuple(data_shape)


TRAINING_TASKS: dict[str, type[TrainingTask]] = {}


def register_training_task(task: type[TrainingTask]) -> type[TrainingTask]:
    """Add a task (usable as a class decorator). Tasks without a section are tried in registration order."""
    if task.name in TRAINING_TASKS:
        raise ValueError(f"training task {task.name!r} is already registered")
    taken = {t.section: n for n, t in TRAINING_TASKS.items() if t.section is not None}
    if task.section is not None and task.section in taken:
        raise ValueError(f"config section {task.section!r} already belongs to the task {taken[task.section]!r}")
    TRAINING_TASKS[task.name] = task
    return task


for _task in (Editing, Video, TextToImage):
    register_training_task(_task)


def training_task(config: Any) -> TrainingTask:
    """The run's task, built from its section (see the module docstring); ConfigError for a config with the
    sections of two tasks, or an invalid section."""
    owned = [t for t in TRAINING_TASKS.values() if t.section is not None and t.section in config]
    if len(owned) > 1:
        raise ConfigError(f"the sections {[t.section for t in owned]} belong to different training tasks "
                          f"({[t.name for t in owned]}); a run has one")
    if owned:
        return owned[0].from_section(config[owned[0].section])
    shape = tuple(dataset_spec(config.data.name).example_shape(config.data))
    for task in TRAINING_TASKS.values():
        if task.claims(shape):
            return task.from_section(None)
    raise ConfigError(f"no training task takes the examples of data.name={config.data.name!r} (shape {shape}); "
                      f"the registered tasks are {sorted(TRAINING_TASKS)}")


def chain_dropouts(first: Dropout | None, second: Dropout | None) -> Dropout | None:
    """Both dropouts, with independent keys (either may be None)."""
    if first is None or second is None:
        return second if first is None else first

    def drop(key: Array, cond: dict[str, Array]) -> dict[str, Array]:
        k1, k2 = jax.random.split(key)
        return second(k2, first(k1, cond))

    return drop


def validate_task(config: Any) -> TrainingTask:
    """The run's task, its section and its fit with the rest of the run checked; ConfigError otherwise."""
    task = training_task(config)
    task.check_run(run_facts(config))
    return task


__all__ = ["RunFacts", "chain_dropouts", "TRAINING_TASKS", "TrainingTask", "TextToImage", "Editing", "Video", "register_training_task",
           "run_facts", "training_task", "validate_task"]
