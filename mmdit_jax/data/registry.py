"""Data sets by name: ``data.name`` in a config picks one; each entry validates its own options.

=================  ================================================  ============  ============================
name               what                                              examples      options (defaults)
=================  ================================================  ============  ============================
``shapes``         procedural captioned shapes, generated locally    (S, S, 3)     image_size, num_train, ...
``shape_edits``    shapes edits: the target image, captioned by the  (S, S, 3)     image_size, num_train, ...
                   instruction, conditioned on the source image
``edit_scenes``    the edit data's target scenes and their captions  (S, S, 3)     image_size, num_train, ...
                   (text-to-image data for an editing model's base)
``moving_shapes``  clips of one shapes object moving in a straight   (T, S, S, 3)  image_size, num_frames, ...
                   line, captioned with its direction and speed
                   (``bounce``: off the walls, clips of any length)
``digits``         sklearn's 8x8 handwritten digits, captioned       (S, S, 3)     image_size
``toy2d``          the NCSN 2D Gaussian mixture, no captions         (2,)          num_train, num_test, seed
``tfds``           any TFDS image data set prepared locally          (S, S, 3)     tfds_name, image_size
=================  ================================================  ============  ============================

Every data section also has ``name``, ``batch_size``, ``num_workers`` and ``data_dir`` (``COMMON``). Adding a
data set is one ``DatasetSpec`` and one line: an entry in ``DATASETS`` or ``register_dataset(name, spec)``.
Config files write a section with ``data_config(name, **overrides)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import ml_collections
import numpy as np

from mmdit_jax.checks import ConfigError, check_choice, check_keys, check_positive_int
from mmdit_jax.data.motion import check_fits, clip_strip
from mmdit_jax.data.render import scatter, to_grid

COMMON: dict[str, Any] = {"batch_size": 32, "num_workers": 0, "data_dir": ""}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One data set: its options, TFDS builder, example shape, record -> example map and how samples look.

    ``builder(data_config, data_dir)`` returns a TFDS builder (ArrayRecord); ``generated`` builders are prepared
    locally on first use, others must already be prepared (nothing is ever downloaded). ``to_example(record)``
    gives the float32 training example (images in [-1, 1]); ``render(samples, rows)`` a ``(H, W, 3)`` uint8
    picture of a batch of samples. ``conditions(record)``, if set, gives per-example image conditions the model
    reads next to the text, ``{name: float32 array in [-1, 1]}`` (an edit's ``{"source": source image}``).
    ``record_map(record)``, if set, rewrites every record of every split as ``build_sources`` reads it (e.g. one
    builder's records seen as another data set's).
    """

    fields: Mapping[str, Any]
    builder: Callable[[Any, str], Any]
    example_shape: Callable[[Any], tuple[int, ...]]
    to_example: Callable[[dict], np.ndarray]
    render: Callable[[np.ndarray, int], np.ndarray]
    captioned: bool = True
    generated: bool = True
    validate: Callable[[Any], None] | None = None
    conditions: Callable[[dict], dict[str, np.ndarray]] | None = None
    record_map: Callable[[dict], dict] | None = None


def _image(record: dict) -> np.ndarray:
    return record["image"].astype(np.float32) / 127.5 - 1.0


def _named_config(cls: Any, config: Any, data_dir: str) -> Any:
    # TFDS refuses a config object named like a predefined one; pass the name then.
    known = {c.name for c in cls.BUILDER_CONFIGS}
    return cls(config=config.name if config.name in known else config, data_dir=data_dir, file_format="array_record")


def _shapes_builder(cfg: Any, data_dir: str) -> Any:
    from mmdit_jax.data.builders.shapes import Shapes, shapes_config

    return _named_config(Shapes, shapes_config(cfg.image_size, cfg.num_train, cfg.num_test, cfg.max_objects,
                                               cfg.seed, cfg.captions), data_dir)


def _shape_edits_builder(cfg: Any, data_dir: str) -> Any:
    from mmdit_jax.data.builders.shape_edits import ShapeEdits, shape_edits_config

    return _named_config(ShapeEdits, shape_edits_config(cfg.image_size, cfg.num_train, cfg.num_test,
                                                        cfg.max_objects, cfg.seed), data_dir)


def _edit_source(record: dict) -> dict[str, np.ndarray]:
    return {"source": record["source"].astype(np.float32) / 127.5 - 1.0}


def _target_scene(record: dict) -> dict:
    """An edit record as a text-to-image record of its target scene (attribute ids as in ``data.edits``)."""
    return {"image": record["image"], "caption": record["target_caption"], "objects": record["target_objects"],
            "background": record["target_background"]}


def _validate_edits(cfg: Any) -> None:
    _positive("image_size", "num_train", "num_test", "max_objects")(cfg)
    from mmdit_jax.data.edits import MAX_OBJECTS

    if cfg.max_objects > MAX_OBJECTS:
        raise ConfigError(f"data.max_objects={cfg.max_objects} is not valid for data.name={cfg.name!r}; choose "
                          f"1..{MAX_OBJECTS}")


def _moving_shapes_builder(cfg: Any, data_dir: str) -> Any:
    from mmdit_jax.data.builders.moving_shapes import MovingShapes, moving_shapes_config

    return _named_config(MovingShapes, moving_shapes_config(cfg.image_size, cfg.num_frames, cfg.num_train,
                                                            cfg.num_test, cfg.seed, cfg.bounce), data_dir)


def _video(record: dict) -> np.ndarray:
    return record["video"].astype(np.float32) / 127.5 - 1.0


def _validate_motion(cfg: Any) -> None:
    _positive("image_size", "num_frames", "num_train", "num_test")(cfg)
    if not isinstance(cfg.bounce, bool):
        raise ConfigError(f"data.bounce must be True or False, got {cfg.bounce!r}")
    if not cfg.bounce:    # bouncing clips fit at any length
        check_fits(cfg.image_size, cfg.num_frames, prefix="data.")


def _digits_builder(cfg: Any, data_dir: str) -> Any:
    from mmdit_jax.data.builders.digits import Digits, digits_config

    return _named_config(Digits, digits_config(cfg.image_size), data_dir)


def _toy2d_builder(cfg: Any, data_dir: str) -> Any:
    from mmdit_jax.data.builders.toy2d import Toy2D, toy2d_config

    return _named_config(Toy2D, toy2d_config(cfg.num_train, cfg.num_test, cfg.seed), data_dir)


def _tfds_builder(cfg: Any, data_dir: str) -> Any:
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(cfg.tfds_name, data_dir=data_dir)
    except Exception as e:  # tfds raises its own DatasetNotFoundError subclasses
        raise ConfigError(f"data.tfds_name={cfg.tfds_name!r} is not a TFDS dataset: {e}") from e


def _positive(*names: str) -> Callable[[Any], None]:
    def validate(cfg: Any) -> None:
        for name in names:
            check_positive_int(f"data.{name}", cfg[name])
    return validate


def _validate_shapes(cfg: Any) -> None:
    _positive("image_size", "num_train", "num_test", "max_objects")(cfg)
    from mmdit_jax.data.captions import CAPTION_SETS

    check_choice("data.captions", cfg.captions, CAPTION_SETS)


def _validate_tfds(cfg: Any) -> None:
    if not cfg.tfds_name:
        raise ConfigError("data.name='tfds' needs data.tfds_name (a TFDS dataset prepared locally)")
    check_positive_int("data.image_size", cfg.image_size)


def _square_image(cfg: Any) -> tuple[int, int, int]:
    return (cfg.image_size, cfg.image_size, 3)


_EDIT_FIELDS = {"image_size": 32, "num_train": 10_000, "num_test": 1_000, "max_objects": 3, "seed": 0}

DATASETS: dict[str, DatasetSpec] = {
    "shapes": DatasetSpec(
        fields={"image_size": 32, "num_train": 10_000, "num_test": 1_000, "max_objects": 1, "seed": 0,
                "captions": "full"},
        builder=_shapes_builder, example_shape=_square_image, to_example=_image, render=to_grid,
        validate=_validate_shapes),
    "shape_edits": DatasetSpec(
        fields=_EDIT_FIELDS, builder=_shape_edits_builder, example_shape=_square_image, to_example=_image,
        render=to_grid, validate=_validate_edits, conditions=_edit_source),
    "edit_scenes": DatasetSpec(
        fields=_EDIT_FIELDS, builder=_shape_edits_builder, example_shape=_square_image, to_example=_image,
        render=to_grid, validate=_validate_edits, record_map=_target_scene),
    "moving_shapes": DatasetSpec(
        fields={"image_size": 32, "num_frames": 8, "num_train": 10_000, "num_test": 1_000, "seed": 0,
                "bounce": False},
        builder=_moving_shapes_builder, example_shape=lambda cfg: (cfg.num_frames, *_square_image(cfg)),
        to_example=_video, render=clip_strip, validate=_validate_motion),
    "digits": DatasetSpec(
        fields={"image_size": 32}, builder=_digits_builder, example_shape=_square_image, to_example=_image,
        render=to_grid, validate=_positive("image_size")),
    "toy2d": DatasetSpec(
        fields={"num_train": 50_000, "num_test": 5_000, "seed": 0}, builder=_toy2d_builder,
        example_shape=lambda cfg: (2,), to_example=lambda r: np.asarray(r["x"], np.float32), render=scatter,
        captioned=False, validate=_positive("num_train", "num_test")),
    # Records are normalised by ``pipeline.generic_record`` (caption from the label name, resized RGB).
    "tfds": DatasetSpec(
        fields={"tfds_name": "", "image_size": 32}, builder=_tfds_builder, example_shape=_square_image,
        to_example=_image, render=to_grid, generated=False, validate=_validate_tfds),
}


def register_dataset(name: str, spec: DatasetSpec) -> DatasetSpec:
    """Add a data set under ``name``."""
    if name in DATASETS and DATASETS[name] is not spec:
        raise ConfigError(f"data set {name!r} is already registered")
    DATASETS[name] = spec
    return spec


def dataset_spec(name: str) -> DatasetSpec:
    check_choice("data.name", name, DATASETS)
    return DATASETS[name]


def data_config(name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """A ``data`` config section: ``name``, the common fields and the data set's own, defaults overridden."""
    spec = dataset_spec(name)
    defaults = {**COMMON, **spec.fields}
    check_keys(f"data ({name})", overrides, defaults)
    return ml_collections.ConfigDict({"name": name, **defaults, **overrides})


def validate_data_config(cfg: Any) -> DatasetSpec:
    """Check a ``data`` section against its data set's options; returns the spec."""
    spec = dataset_spec(cfg.name)
    check_keys(f"data ({cfg.name})", [k for k in cfg.keys() if k != "name"], {**COMMON, **spec.fields})
    missing = sorted(k for k in {**COMMON, **spec.fields} if k not in cfg)
    if missing:
        raise ConfigError(f"data ({cfg.name}) is missing fields {missing}")
    check_positive_int("data.batch_size", cfg.batch_size)
    if isinstance(cfg.num_workers, bool) or not isinstance(cfg.num_workers, int) or cfg.num_workers < 0:
        raise ConfigError(f"data.num_workers must be an integer >= 0, got {cfg.num_workers!r}")
    if spec.validate is not None:
        spec.validate(cfg)
    return spec
