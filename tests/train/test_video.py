"""Video runs: the next-chunk window view, a frame-by-frame run that trains, writes animated samples and rolls out
clips longer than its training clips (and from a given first frame), joint clips, and the video section's checks."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs.video import get_config
from mmdit_jax.checks import ConfigError
from mmdit_jax.config_schema import validate_config
from mmdit_jax.data.motion import motion_example
from mmdit_jax.pipelines.sampling import SamplingPipeline
from mmdit_jax.pipelines.video import VideoPipeline
from mmdit_jax.setup.video import window_view
from mmdit_jax.train import loop


def test_window_view_cuts_a_target_chunk_after_its_context_with_absent_frames_zero():
    x = jnp.arange(1.0, 7.0)[None, :, None, None, None] * jnp.ones((64, 6, 2, 2, 1))   # frame i holds i + 1
    target, cond = window_view(2, 3)(jax.random.PRNGKey(0), x, {"context": jnp.ones((64, 1, 1))})
    assert target.shape == (64, 3, 2, 2, 1) and cond["context_frames"].shape == (64, 2, 2, 2, 1)
    first = np.asarray(target[:, 0, 0, 0, 0]).astype(int) - 1          # the target's start frame per example
    assert set(first) == {0, 1, 2, 3}                                  # every start in [0, T - K] is drawn
    for b, s in enumerate(first):
        np.testing.assert_array_equal(target[b, :, 0, 0, 0], np.arange(s, s + 3) + 1)
        expected = [f + 1 if f >= 0 else 0 for f in (s - 2, s - 1)]    # before the clip: absent (zero)
        np.testing.assert_array_equal(cond["context_frames"][b, :, 0, 0, 0], expected)
    assert "context" in cond


@pytest.fixture(scope="module")
def next_chunk_run(tmp_path_factory):
    cfg = get_config("next_chunk,tiny")
    workdir = str(tmp_path_factory.mktemp("video_next_chunk"))
    summary = loop.train(cfg, workdir)
    return cfg, workdir, summary


def test_a_frame_by_frame_run_trains_and_writes_animated_samples(next_chunk_run):
    cfg, workdir, summary = next_chunk_run
    assert summary["last_step"] == cfg.train.num_steps
    gif = Image.open(os.path.join(workdir, "samples", "step_0000004.gif"))
    assert gif.n_frames == cfg.data.num_frames                           # one GIF frame per clip frame
    strip = Image.open(os.path.join(workdir, "samples", "step_0000004.png"))
    assert strip.size[0] > strip.size[1]                                 # frames along the rows


def test_sample_and_eval_modes_on_a_frame_by_frame_run(next_chunk_run):
    from mmdit_jax import commands

    cfg, workdir, _ = next_chunk_run
    path = commands.sample(cfg, workdir, ["a green ring moving slowly down"])
    assert path.endswith(".gif") and Image.open(path).n_frames == cfg.data.num_frames
    losses = commands.evaluate(cfg, workdir)
    assert len(losses) == cfg.train.loss_buckets and all(np.isfinite(v) for v in losses.values())


def test_rollouts_extend_past_the_training_length_chain_their_chunks_and_start_from_a_given_frame(next_chunk_run):
    cfg, workdir, _ = next_chunk_run
    pipe = VideoPipeline.from_workdir(cfg, workdir)
    prompts = ["a red circle moving quickly to the right", "a blue square moving slowly up"]
    long = pipe.clips(prompts, seed=3, num_frames=7)                      # training clips have 4 frames
    assert long.shape == (2, 7, 32, 32, 3) and long.dtype == np.uint8
    np.testing.assert_array_equal(pipe.clips(prompts, seed=3, num_frames=7), long)   # seeded
    assert not np.array_equal(pipe.clips(prompts, seed=4, num_frames=7), long)

    # the rollout is its chunks: chunk i sampled given the last C frames before it (absent = zeros at the start)
    sampling, vid = pipe.sampling, cfg.video
    cond = sampling.conditioning(prompts)
    negative = sampling.model.text.negative(sampling.negative, cond)
    key, variables = jax.random.PRNGKey(3), sampling.model.variables
    frames = jnp.zeros((2, vid.context_frames, 32, 32, 3))
    for i in range(4):
        ctx = frames[:, -vid.context_frames:]
        chunk = sampling.draw(variables, {**cond, "context_frames": ctx}, {**negative, "context_frames": ctx},
                                 jax.random.fold_in(key, i), (2, vid.chunk_frames, 32, 32, 3), False)
        frames = jnp.concatenate([frames, chunk], axis=1)
    by_hand = np.clip(np.round((np.asarray(frames[:, vid.context_frames:][:, :7]) + 1) * 127.5), 0, 255)
    np.testing.assert_array_equal(long, by_hand.astype(np.uint8))

    # image-to-video: the clip starts with the given frame, and the frame is read
    first = np.stack([motion_example(i, 1, 32, 4)["video"][0] for i in range(2)])
    i2v = pipe.clips(prompts, seed=3, num_frames=5, first_frames=first)
    np.testing.assert_array_equal(i2v[:, 0], first)
    other = pipe.clips(prompts, seed=3, num_frames=5, first_frames=255 - first)
    assert not np.array_equal(other[:, 1:], i2v[:, 1:])
    with pytest.raises(ConfigError, match="first_frames must be"):
        pipe.clips(prompts, seed=3, first_frames=first[:, :16])


def test_joint_clips_have_any_length_and_refuse_image_to_video(tmp_path):
    cfg = get_config("joint,tiny")
    pipe = VideoPipeline(SamplingPipeline.from_workdir(cfg, str(tmp_path), allow_untrained=True))
    clips = pipe.clips(["a red circle moving quickly to the right"], seed=0, num_frames=6)
    assert clips.shape == (1, 6, 32, 32, 3)
    with pytest.raises(ConfigError, match="video.mode='next_chunk'"):
        pipe.clips(["a red circle"], seed=0, first_frames=clips[:, 0])


def test_the_video_section_is_checked_at_start_up():
    validate_config(get_config("next_chunk,tiny"))
    validate_config(get_config("joint,flux,tiny"))
    cases = [
        (lambda c: c.video.update(mode="causal"), "video.mode='causal'"),
        (lambda c: c.video.update(chunk_frames=9), "video.chunk_frames=9 is longer than the data's clips"),
        (lambda c: c.video.update(chunk_frames=0), "video.chunk_frames"),
        (lambda c: c.model.update(temporal_patch_size=2) or c.video.update(context_frames=1),
         "video.context_frames=1 is not divisible by model.temporal_patch_size=2"),
        (lambda c: c.model.update(temporal_patch_size=3), "clips of 4 frames are not divisible"),
        (lambda c: c.data.update(num_frames=12), "data.num_frames"),
    ]
    for mutate, message in cases:
        cfg = get_config("next_chunk,tiny")
        mutate(cfg)
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            validate_config(cfg)
    from configs.default import get_config as default_config
    from mmdit_jax.setup.video import video_config

    image_run = default_config("tiny")
    image_run.video = video_config("joint")
    with pytest.raises(ConfigError, match="the video section needs clip data"):
        validate_config(image_run)
