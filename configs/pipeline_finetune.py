"""Fine-tuning a diffusers SD3 / SD3.5 pipeline folder: LoRA (``:FOLDER``, rank 16 on the joint-attention
projections) or every weight (``:FOLDER,full``), trained in the folder's own VAE latent space, conditioned by the
folder's own CLIP-L / CLIP-G (/ T5) encoders, on the rectified-flow schedule of its scheduler config.

    python -m mmdit_jax --config=configs/pipeline_finetune.py:/path/to/stable-diffusion-3.5-medium \
        --workdir=runs/sd35_lora --config.data.image_size=512 --config.train.num_steps=2000
    python -m mmdit_jax --config=configs/pipeline_finetune.py:/path/to/sd35 --workdir=runs/sd35_lora --mode=export_lora

Everything architectural is read from the folder (nothing is downloaded); the data, optimizer and sampling
sections are ``configs/default.py``'s (``shapes`` at the transformer's native size by default) and take
``--config.*`` overrides as usual. The export is a diffusers LoRA file: ``pipe.load_lora_weights(folder)``.
"""

import json
import os

import ml_collections

from configs.default import get_config as default_config
from configs.text import get_config as text_config
from mmdit_jax.adapters.finetune import finetune_config
from mmdit_jax.families import family_config
from mmdit_jax.interop.sd3 import config_fields_from_folder
from mmdit_jax.components.codec import latent_config


def _json(folder: str, *parts: str) -> dict:
    path = os.path.join(folder, *parts)
    if not os.path.isfile(path):
        raise ValueError(f"configs/pipeline_finetune.py: {path} is missing; give a diffusers SD3 pipeline folder")
    with open(path) as f:
        return json.load(f)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    folder, _, mode = arg.partition(",")
    if not folder or mode not in ("", "full"):
        raise ValueError(f"configs/pipeline_finetune.py: argument {arg!r}; valid: 'FOLDER' (LoRA) or 'FOLDER,full'")
    folder = os.path.abspath(folder)
    model = config_fields_from_folder(folder)
    vae = _json(folder, "vae", "config.json")
    scheduler = _json(folder, "scheduler", "scheduler_config.json")
    c = default_config()
    c.model = family_config("sd3", **model)
    c.data.image_size = model["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)
    c.latent = latent_config(vae=folder)
    c.text = text_config("sd3")
    for name, encoder, tokenizer in (("clip_l", "text_encoder", "tokenizer"), ("clip_g", "text_encoder_2", "tokenizer_2"),
                                     ("t5", "text_encoder_3", "tokenizer_3")):
        c.text[name].path = os.path.join(folder, encoder)
        c.text[name].tokenizer_path = os.path.join(folder, tokenizer)
    c.text.t5.enabled = os.path.isdir(os.path.join(folder, "text_encoder_3"))
    c.text.joint_dim = model["joint_attention_dim"]
    c.text.drop_probs = (0.0, 0.0, 0.0)        # a fine-tune keeps the released model's guidance behaviour
    c.sample.negative = "empty_prompt"         # how the released model was guided (diffusers' default)
    c.schedule = ml_collections.ConfigDict(dict(name="rectified_flow", shift=float(scheduler.get("shift", 1.0)),
                                                t_sampling="logit_normal", logit_mean=0.0, logit_std=1.0))
    c.timestep_scale = float(scheduler.get("num_train_timesteps", 1000))
    c.finetune = finetune_config(init_from=folder, rank=0 if mode == "full" else 16, alpha=16.0)
    c.optim.update(learning_rate=1e-4 if mode == "full" else 1e-3, warmup_steps=50)
    return c
