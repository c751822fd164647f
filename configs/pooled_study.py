"""The pooled-CLIP study at toy scale (docs/pooled_clip_study.md): one config for both experiments, clip_removal
and pooled_steering.

    python -m experiments.clip_removal.run    --config=configs/pooled_study.py --workdir=runs/pooled_study
    python -m experiments.pooled_steering.run --config=configs/pooled_study.py --workdir=runs/pooled_study

Stages are cached in the workdir and shared: the toy CLIP (contrastive pretraining of the tiny text towers),
the attribute classifier, and the two MMDiTs (``mmdit`` below with y = e_t + h_y, and the same with y = e_t).
``:tiny`` is the smoke-test size. ``:large`` trains bigger study models (D = 192, 6 layers, 5,000 steps) for
the question of how much model short prompts ("a red triangle") need to give one coherent object.
"""

import ml_collections

from configs.default import get_config as default_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.toy_clip = ml_collections.ConfigDict(dict(
        steps=1200, batch_size=128, learning_rate=3e-3, num_train=10_000, data_seed=7, image_widths=(16, 32, 64),
        max_length=32, eval_examples=1000))
    c.classifier = ml_collections.ConfigDict(dict(steps=800, batch_size=64, num_train=10_000, seed=1234,
                                                  eval_examples=2000))
    # Both study models: the default shapes MMDiT, its CLIP towers replaced by the frozen toy CLIP at run time.
    c.mmdit = default_config("tiny" if arg == "tiny" else "")
    c.deviation = ml_collections.ConfigDict(dict(kind="features", dreamsim_dir=""))
    # (a) inference-time removal: every template (2 to 20 words) of the same scenes, with and without h_y.
    c.removal = ml_collections.ConfigDict(dict(num_scenes=32, scene_seed=4242, seeds=(0, 1, 2), grid_scenes=6,
                                               short_template=1, long_template=8))
    # (b) training-time removal: adherence and Fréchet distance of the two models, short vs long prompts.
    c.quality = ml_collections.ConfigDict(dict(num_samples=512, scene_seed=5151, seeds=(0, 1, 2), short_template=1,
                                               long_template=7, num_real=2000))
    # Pooled steering: y(p) + w (y(p+) - y(p-)), fixed phrase pairs as in the study ("long hair" / "short hair").
    c.steering = ml_collections.ConfigDict(dict(
        weights=(0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0), num_scenes=24, scene_seed=6262, templates=(1, 7), seeds=(0, 1),
        grid_scenes=4,
        # (attribute, from, to, p+, p-): scenes have attribute = from; success = the classifier reads `to`.
        pairs=(("colour", "red", "blue", "a blue circle", "a red circle"),
               ("shape", "circle", "square", "a white square", "a white circle"),
               ("size", "small", "large", "a large green circle", "a small green circle"),
               ("position", "left", "right", "a red circle in the right", "a red circle in the left")),
        # Steering what the prompt leaves free (experiments/pooled_steering/unspecified.py): (attribute, target,
        # contrast, template that omits it, template that names it); p+ / p- are each scene's own description
        # with the attribute set to target / contrast.
        unspecified=(("size", "large", "small", 1, 2), ("size", "small", "large", 3, 4),
                     ("position", "right", "left", 2, 4), ("position", "top left", "bottom right", 1, 3))))
    if arg == "large":
        c.mmdit.model.update(num_layers=6, num_heads=6)                  # D = 6 x 32 = 192
        c.mmdit.train.num_steps = 5000
    if arg == "tiny":
        c.toy_clip.update(steps=4, batch_size=16, num_train=64, eval_examples=32)
        c.classifier.update(steps=4, batch_size=16, num_train=64, eval_examples=32)
        c.removal.update(num_scenes=2, seeds=(0,), grid_scenes=2)
        c.quality.update(num_samples=8, seeds=(0,), num_real=16)
        c.steering.update(weights=(0.0, 2.0), num_scenes=2, templates=(1,), seeds=(0,), grid_scenes=2,
                          unspecified=(("size", "large", "small", 1, 2),))
    elif arg not in ("", "large"):
        raise ValueError(f"configs/pooled_study.py: unknown argument {arg!r}; valid: '', 'large' or 'tiny'")
    return c
