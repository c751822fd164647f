"""Instruction editing on ``shape_edits`` (scenes of 1-3 objects; recolour, reshape, resize, move, remove, add,
background), fine-tuned from a text-to-image model of the same scenes:

    python -m mmdit_jax --config=configs/editing.py:base --workdir=runs/edit_base          # text-to-image parent
    python -m mmdit_jax --config=configs/editing.py:in_context --workdir=runs/edit_ic \\
        --config.finetune.init_from=runs/edit_base
    python -m mmdit_jax --config=configs/editing.py:channel_concat --workdir=runs/edit_cc \\
        --config.finetune.init_from=runs/edit_base

``in_context``: the source image's tokens join the image stream as frame 1 (same weights as the parent);
``channel_concat``: the source is concatenated to the noisy input (``model.in_channels`` 6, the new input rows start
at zero), with InstructPix2Pix's condition dropout and two-scale guidance. Without ``finetune.init_from`` either
trains from scratch. Append ``,tiny`` for the smoke-test size and ``,flux`` for the FLUX-style family (2 double- and
2 single-stream blocks on 2x2-packed pixels, the reference marked by RoPE ids ``(1, row, col)``), e.g.
``:in_context,flux``. ``experiments/editing`` runs all three (SD3-style) and SDEdit.
"""

import ml_collections

from configs.default import get_config as default_config
from mmdit_jax.adapters.finetune import finetune_config
from mmdit_jax.families import family_config
from mmdit_jax.setup.editing import edit_config

MODES = ("base", "in_context", "channel_concat")
# Scene captions of three objects and a background run to ~40 CLIP tokens.
MAX_LENGTH = 48


def get_config(arg: str = "in_context") -> ml_collections.ConfigDict:
    mode, *options = arg.split(",")
    if mode not in MODES or not set(options) <= {"tiny", "flux"} or len(set(options)) != len(options):
        raise ValueError(f"configs/editing.py: unknown argument {arg!r}; valid: one of {MODES}, optionally followed "
                         "by ',tiny' and / or ',flux'")
    size = "tiny" if "tiny" in options else ""
    c = default_config(size)
    if "flux" in options:
        c.model = family_config("flux", in_channels=12, out_channels=12, num_layers=2, num_single_layers=2,
                                num_heads=4, head_dim=32, axes_dims_rope=(8, 12, 12), joint_attention_dim=96,
                                pooled_projection_dim=96, guidance_embeds=False)
        if size:
            c.model.update(num_layers=1, num_single_layers=1, num_heads=2, head_dim=16, axes_dims_rope=(4, 6, 6))
    data = dict(image_size=32, num_train=c.data.num_train, num_test=c.data.num_test, max_objects=3, seed=0,
                batch_size=c.data.batch_size)
    c.data = ml_collections.ConfigDict(
        {"name": "edit_scenes" if mode == "base" else "shape_edits", "num_workers": 0, "data_dir": "", **data})
    if not size:   # the smoke-test size keeps configs/default.py:tiny's text section, so it can fine-tune such a run
        c.text.clip_l.max_length = c.text.clip_g.max_length = MAX_LENGTH
    c.sample.prompts = ("a red circle in the top left and a blue square in the center",
                        "a green triangle in the bottom right on a navy background")
    c.sample.per_prompt = 4
    if mode == "base":
        return c
    c.edit = edit_config(mode, image_drop_prob=0.05 if mode == "channel_concat" else 0.0, image_guidance_scale=1.5)
    if mode == "channel_concat":
        c.model.in_channels = 2 * c.model.out_channels
    c.finetune = finetune_config()    # full fine-tuning; init_from: the base run's workdir ("" = from scratch)
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 100
    c.sample.per_prompt = 3           # an editing run's sample picture: 4 test sources, each with 3 edits
    if not size:
        c.train.update(num_steps=4000, checkpoint_every=500, sample_every=2000)
    return c
