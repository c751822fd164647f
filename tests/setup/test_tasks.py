"""The training-task registry: which task a config is, what each task owns, and a task registered from outside."""

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import pytest

from configs.default import get_config as default_config
from configs.editing import get_config as editing_config
from configs.video import get_config as video_config
from mmdit_jax.checks import ConfigError
from mmdit_jax.config_schema import validate_config
from mmdit_jax.setup import tasks
from mmdit_jax.setup.editing import edit_config
from mmdit_jax.setup.video import video_config as video_section


@pytest.mark.parametrize("config, name", [
    (lambda: default_config("tiny"), "text_to_image"),
    (lambda: editing_config("in_context,tiny"), "editing"),
    (lambda: editing_config("channel_concat,tiny"), "editing"),
    (lambda: video_config("joint,tiny"), "video"),
    (lambda: video_config("next_chunk,tiny"), "video"),
])
def test_shipped_configs_name_their_task(config, name):
    assert tasks.training_task(config()).name == name


def test_clips_without_a_video_section_train_jointly():
    cfg = video_config("next_chunk,tiny")
    del cfg["video"]
    task = tasks.training_task(cfg)
    assert (task.name, task.mode, task.view()) == ("video", "joint", None)


def test_each_task_answers_for_its_section():
    concat = tasks.training_task(editing_config("channel_concat,tiny"))
    assert concat.image_conditions() == {"source": "concat"}
    model = {"in_channels": 6, "out_channels": 3}
    assert concat.base_model(model) == {"in_channels": 3, "out_channels": 3}
    assert tasks.training_task(editing_config("in_context,tiny")).image_conditions() == {"source": "reference"}
    chunk = tasks.training_task(video_config("next_chunk,tiny"))
    assert chunk.sample_shape((8, 16, 16, 3)) == (chunk.chunk_frames, 16, 16, 3)
    x = jnp.arange(2 * 8, dtype=jnp.float32).reshape(2, 8, 1, 1, 1)
    target, cond = chunk.view()(jax.random.PRNGKey(0), x, {})
    assert target.shape[1] == chunk.chunk_frames and cond["context_frames"].shape[1] == chunk.context_frames
    image = tasks.training_task(default_config("tiny"))
    assert (image.image_conditions(), image.dropout(), image.view()) == ({}, None, None)


def test_two_tasks_sections_are_refused():
    cfg = editing_config("in_context,tiny")
    cfg.video = video_section()
    with pytest.raises(ConfigError, match=r"\['edit', 'video'\]"):
        tasks.training_task(cfg)


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.edit.update(mode="concat"), "edit.mode"),
    (lambda c: c.edit.update(image_drop_prob=0.7), "edit.image_drop_prob"),
    (lambda c: c.edit.update(image_guidance_scale=float("nan")), "edit.image_guidance_scale"),
    (lambda c: c.model.update(in_channels=3), "model.in_channels"),
])
def test_editing_task_names_the_bad_field(edit, match):
    cfg = editing_config("channel_concat,tiny")
    edit(cfg)
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg)


def test_video_section_on_images_is_refused():
    cfg = default_config("tiny")
    cfg.video = video_section("next_chunk")
    with pytest.raises(ConfigError, match="clip data"):
        validate_config(cfg)


def test_edit_section_on_captioned_images_is_refused():
    cfg = default_config("tiny")
    cfg.edit = edit_config()
    with pytest.raises(ConfigError, match="source image"):
        validate_config(cfg)


@dataclasses.dataclass(frozen=True)
class Outpaint(tasks.TrainingTask):
    """A task from outside the package: its own section, validated by the schema through the registry."""

    margin: int = 0
    name: ClassVar[str] = "outpaint"
    section: ClassVar[str] = "outpaint"

    @classmethod
    def from_section(cls, section: Any) -> "Outpaint":
        if section.margin < 0:
            raise ConfigError(f"outpaint.margin={section.margin} must be >= 0")
        return cls(int(section.margin))


def test_a_registered_task_owns_its_section():
    tasks.register_training_task(Outpaint)
    try:
        cfg = default_config("tiny")
        cfg.outpaint = {"margin": 2}
        validate_config(cfg)      # the schema accepts the task's section
        assert tasks.training_task(cfg) == Outpaint(2)
        cfg.outpaint.margin = -1
        with pytest.raises(ConfigError, match="outpaint.margin"):
            validate_config(cfg)
        with pytest.raises(ValueError, match="already"):
            tasks.register_training_task(Outpaint)
    finally:
        tasks.TRAINING_TASKS.pop("outpaint")
    with pytest.raises(ConfigError, match="outpaint"):   # without the task, the section is an unknown key
        validate_config(cfg)
