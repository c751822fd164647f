"""Bad input to every entry point: exit status 2, exactly one line ``error: ...`` on stderr naming the argument or
file, and nothing created or changed (the test's folder and the shared fixture folders are compared file by file,
sizes and modification times, before and after). docs/errors.md lists the same refusals.

The commands run in this process (a subprocess costs seconds of JAX import each): the command's module is imported
afresh against absl's global flags, reset to the harness's own between cases, and ``harness.run_command`` runs its
body with a patched ``sys.argv``. Every case is refused before a model is built.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from absl import app, flags

from mmdit_jax import harness
from mmdit_jax.checks import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
app.define_help_flags()
BASE_FLAGS = frozenset(FLAGS)       # absl's and the harness's: what every command starts from

MODULES = {"mmdit_jax": ("mmdit_jax.cli", "_run"), "generate": ("mmdit_jax.generate", "_main"),
           "edit": ("mmdit_jax.edit", "_main"), "train_autoencoder": ("mmdit_jax.train_autoencoder", "_run")}


def _fresh_command(entry: str):
    """The body of ``entry`` with its flags defined on absl's reset global flags."""
    for name in list(FLAGS):
        if name not in BASE_FLAGS:
            delattr(FLAGS, name)
    FLAGS.unparse_flags()
    if entry == "study":
        return None
    module_name, body = MODULES[entry]
    sys.modules.pop(module_name, None)
    module = importlib.import_module(module_name)
    if entry == "edit":
        module.define_flags()
    return getattr(module, body)


def run_in_process(entry: str, args: list[str], monkeypatch) -> int:
    """Run the command line ``entry args`` as its program would; returns the exit status."""
    body = _fresh_command(entry)
    monkeypatch.setattr(sys, "argv", [entry, "--notuned_runtime", *args])
    with pytest.raises(SystemExit) as exit_:
        if entry == "study":
            from mmdit_jax.study.cli import run_experiment

            run_experiment(lambda config, workdir, outdir: {}, "unused", folder_run=lambda settings, outdir: {})
        else:
            harness.run_command(body)
    return exit_.value.code


def snapshot(*folders) -> dict:
    files = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                files[path] = (st.st_size, st.st_mtime_ns) if name in filenames else "dir"
    return files


@pytest.fixture(scope="module", autouse=True)
def absl_log_stream():
    """``absl.app.run`` points absl's log handler at the stderr of the moment (the capture of a test): give it the
    process's stderr back, which outlives the tests, and forget the parsed flags."""
    yield
    from absl import logging

    logging.get_absl_handler().python_handler.stream = sys.__stderr__
    logging.set_verbosity(logging.WARNING)
    FLAGS.unparse_flags()   # later tests in this process must not see this module's last command line (--verbosity)


@pytest.fixture(scope="module")
def fake_workdir(tmp_path_factory):
    """A workdir as training leaves it, as far as the refusals look: ``config.json`` of ``configs/default.py:tiny``
    and a checkpoint folder of step 6 (empty: every case is refused before a checkpoint is read)."""
    from configs.default import get_config

    workdir = tmp_path_factory.mktemp("fake_workdir")
    (workdir / "config.json").write_text(json.dumps(json.loads(get_config("tiny").to_json_best_effort()), indent=1))
    (workdir / "checkpoints" / "6").mkdir(parents=True)
    (workdir / "samples").mkdir()
    (workdir / "samples" / "sample_step_0000006.png").write_bytes(b"an earlier sample")
    return workdir


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_sd3_folder, fake_workdir):
    """Bad files shared by the cases (read-only)."""
    tmp = tmp_path_factory.mktemp("bad_files")
    (tmp / "not_an_image.png").write_text("hello")
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(tmp / "good.png")
    (tmp / "truncated.png").write_bytes((tmp / "good.png").read_bytes()[:40])
    (tmp / "a_file").write_text("x")
    (tmp / "comments.txt").write_text("# only a comment\n\n")
    (tmp / "truncated.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": ")
    (tmp / "empty_dir").mkdir()
    (tmp / "bad_index").mkdir()
    (tmp / "bad_index" / "model_index.json").write_text("{not json")
    broken = tmp / "broken_json_workdir"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "checkpoints").mkdir()
    corrupt = tmp / "corrupt_sd3"
    shutil.copytree(tiny_sd3_folder, corrupt)
    weights = next((corrupt / "transformer").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    out = tmp / "out_with_outputs"
    out.mkdir()
    from mmdit_jax.generate import file_name

    (out / file_name(0, "a cat", 0)).write_bytes(b"an earlier image")
    (out / "turn_1.png").write_bytes(b"an earlier edit")
    (tmp / "bogus_config.py").write_text("import ml_collections\n\ndef get_config(arg='a'):\n"
                                         "    if arg not in ('a', 'b'):\n"
                                         "        raise ValueError(f'unknown argument {arg!r}; valid: a, b')\n"
                                         "    return ml_collections.ConfigDict({'x': 1})\n")
    return {"tmp": tmp, "sd3": tiny_sd3_folder, "workdir": fake_workdir, "weights": weights}


# (entry point, arguments with {placeholders}, what the one line must name)
CASES = [
    # --- python -m mmdit_jax: absl's own flag errors
    ("mmdit_jax", ["--workdir={new}", "--bogus=1"], "bogus"),
    ("mmdit_jax", ["--workdir={new}", "--num_processes=x"], "--num_processes"),
    ("mmdit_jax", ["--workdir={new}", "--mode=sampel"], "--mode"),
    ("mmdit_jax", ["--workdir={new}", "--multihost=maybe"], "--multihost"),
    ("mmdit_jax", ["--config=configs/default.py:tiny"], "--workdir"),
    ("mmdit_jax", ["--config=configs/default.py:tiny", "--workdir={new}", "extra"], "extra"),
    # config files and their keys
    ("mmdit_jax", ["--config={tmp}/missing.py", "--workdir={new}"], "--config"),
    ("mmdit_jax", ["--config={tmp}/missing.py:tiny", "--config.seed=1", "--workdir={new}"], "--config"),
    ("mmdit_jax", ["--config=configs/default.py:tinyy", "--workdir={new}"], "tinyy"),
    ("mmdit_jax", ["--config={tmp}/bogus_config.py:c", "--workdir={new}"], "--config"),
    ("mmdit_jax", ["--config=configs/default.py:tiny", "--config.train.nosuchkey=1", "--workdir={new}"],
     "num_steps"),
    ("mmdit_jax", ["--config=configs/default.py:tiny", "--config.trian.num_steps=1", "--workdir={new}"], "'trian'"),
    ("mmdit_jax", ["--config=configs/default.py:tiny", "--config.seed.x=1", "--workdir={new}"], "--config.seed.x"),
    ("mmdit_jax", ["--config=configs/default.py:tiny", "--config.train.num_steps=abc", "--workdir={new}"],
     "--config.train.num_steps"),
    ("mmdit_jax", ["--config=configs/default.py:tiny", "--config.model.num_heads=0", "--workdir={new}"],
     "model.num_heads"),
    ("mmdit_jax", ["--config=configs/default.py:tiny", "--config.optim.learning_rate=inf", "--workdir={new}"],
     "optim.learning_rate"),
    ("mmdit_jax", ["--config=configs/default.py:tiny", "--config.sample.guidance_scale=nan", "--workdir={new}"],
     "sample.guidance_scale"),
    # flags of another mode, paths
    ("mmdit_jax", ["--config=configs/default.py:tiny", "--workdir={new}", "--prompts=a"], "--prompts"),
    ("mmdit_jax", ["--config=configs/default.py:tiny", "--workdir={new}", "--mode=sample", "--out={tmp}/o"],
     "--out"),
    ("mmdit_jax", ["--config=configs/default.py:tiny", "--workdir={new}", "--allow_untrained"],
     "--allow_untrained"),
    ("mmdit_jax", ["--workdir={workdir}", "--mode=eval", "--overwrite"], "--overwrite"),
    ("mmdit_jax", ["--config=configs/default.py:tiny", "--workdir={tmp}/a_file"], "--workdir"),
    ("mmdit_jax", ["--workdir={new}", "--mode=sample"], "--config"),
    ("mmdit_jax", ["--workdir={tmp}/broken_json_workdir", "--mode=sample"], "config.json"),
    ("mmdit_jax", ["--workdir={workdir}", "--mode=sample", "--prompt_file={tmp}/missing.txt"], "--prompt_file"),
    ("mmdit_jax", ["--workdir={workdir}", "--mode=sample", "--prompt_file={tmp}/comments.txt"], "--prompt"),
    # workdirs remember their config: shapes must agree
    ("mmdit_jax", ["--config=configs/default.py:tiny", "--config.model.num_layers=3", "--workdir={workdir}",
                   "--mode=sample"], "model.num_layers"),
    ("mmdit_jax", ["--config=configs/default.py:tiny", "--config.model.num_heads=4", "--workdir={workdir}"],
     "model.num_heads"),
    ("mmdit_jax", ["--config=configs/default.py:tiny", "--config.data.image_size=16", "--workdir={workdir}",
                   "--mode=eval"], "data.image_size"),
    # outputs are not replaced
    ("mmdit_jax", ["--workdir={workdir}", "--mode=sample"], "sample_step_0000006.png"),
    ("mmdit_jax", ["--workdir={workdir}", "--mode=export_lora", "--out={tmp}/a_file"], "--out"),
    ("mmdit_jax", ["--workdir={workdir}", "--mode=export_lora"], "LoRA"),
    # --- python -m mmdit_jax.generate
    ("generate", ["--prompt=a"], "--source"),
    ("generate", ["--source={tmp}/missing", "--prompt=a"], "--source"),
    ("generate", ["--source={tmp}/a_file", "--prompt=a"], "--source"),
    ("generate", ["--source={tmp}/empty_dir", "--prompt=a", "--out={out}"], "--source"),
    ("generate", ["--source={sd3}", "--prompt=a", "--lora_scale=nan"], "--lora_scale"),
    ("generate", ["--source={sd3}", "--prompt=a", "--lora_scale=inf"], "--lora_scale"),
    ("generate", ["--source={sd3}", "--prompt=a", "--lora_scale=1e9"], "--lora_scale"),
    ("generate", ["--source={sd3}", "--prompt=a", "--guidance_scale=nan"], "--guidance_scale"),
    ("generate", ["--source={sd3}", "--prompt=a", "--guidance_scale=-inf"], "--guidance_scale"),
    ("generate", ["--source={sd3}", "--prompt=a", "--guidance_scale=-1"], "--guidance_scale"),
    ("generate", ["--source={sd3}", "--prompt=a", "--steps=0"], "--steps"),
    ("generate", ["--source={sd3}", "--prompt=a", "--steps=-3"], "--steps"),
    ("generate", ["--source={sd3}", "--prompt=a", "--steps=2.5"], "--steps"),
    ("generate", ["--source={sd3}", "--prompt=a", "--height=0"], "--height"),
    ("generate", ["--source={sd3}", "--prompt=a", "--width=-8"], "--width"),
    ("generate", ["--source={sd3}", "--prompt=a", "--num_images_per_prompt=0"], "--num_images_per_prompt"),
    ("generate", ["--source={sd3}", "--prompt=a", "--batch_size=0"], "--batch_size"),
    ("generate", ["--source={sd3}", "--prompt=a", "--seed=abc"], "--seed"),
    ("generate", ["--source={sd3}", "--prompt=a", "--bf16=maybe"], "--bf16"),
    ("generate", ["--source={sd3}", "--prompt=a", "--guidance=3"], "guidance"),
    ("generate", ["--source={sd3}", "--prompt=a", "extra"], "extra"),
    ("generate", ["--source={sd3}", "--prompt=a", "--out={tmp}/a_file"], "--out"),
    ("generate", ["--source={sd3}", "--prompt=a cat", "--out={tmp}/out_with_outputs"], "--overwrite"),
    ("generate", ["--source={sd3}"], "--prompt"),
    ("generate", ["--source={sd3}", "--prompt_file={tmp}/missing.txt"], "--prompt_file"),
    ("generate", ["--source={sd3}", "--prompt_file={tmp}/comments.txt"], "--prompt"),
    ("generate", ["--source={sd3}", "--prompt=a", "--lora={tmp}/missing.safetensors"], "--lora"),
    ("generate", ["--source={tmp}/bad_index", "--prompt=a", "--out={out}"], "model_index.json"),
    ("generate", ["--source={tmp}/corrupt_sd3", "--prompt=a", "--out={out}"], "{weights}"),
    ("generate", ["--source={sd3}", "--prompt=a", "--lora={tmp}/truncated.safetensors", "--out={out}"], "--lora"),
    # --- python -m mmdit_jax.edit
    ("edit", ["--source={workdir}", "--instruction=x"], "--image"),
    ("edit", ["--source={workdir}", "--image={tmp}/missing.png", "--instruction=x"], "--image"),
    ("edit", ["--source={workdir}", "--image={tmp}/not_an_image.png", "--instruction=x"], "--image"),
    ("edit", ["--source={workdir}", "--image={tmp}/truncated.png", "--instruction=x"], "--image"),
    ("edit", ["--source={workdir}", "--image={tmp}/good.png"], "--instruction"),
    ("edit", ["--source={tmp}/missing", "--image={tmp}/good.png", "--instruction=x"], "--source"),
    ("edit", ["--source={workdir}", "--image={tmp}/good.png", "--instruction=x", "--strength=0"], "--strength"),
    ("edit", ["--source={workdir}", "--image={tmp}/good.png", "--instruction=x", "--strength=1.5"], "--strength"),
    ("edit", ["--source={workdir}", "--image={tmp}/good.png", "--instruction=x", "--strength=nan"], "--strength"),
    ("edit", ["--source={workdir}", "--image={tmp}/good.png", "--instruction=x", "--guidance_scale=inf"],
     "--guidance_scale"),
    ("edit", ["--source={workdir}", "--image={tmp}/good.png", "--instruction=x", "--image_guidance_scale=nan"],
     "--image_guidance_scale"),
    ("edit", ["--source={workdir}", "--image={tmp}/good.png", "--instruction=x", "--steps=0"], "--steps"),
    ("edit", ["--source={workdir}", "--image={tmp}/good.png", "--instruction=x", "--steps=5"], "--steps"),
    ("edit", ["--source={sd3}", "--image={tmp}/good.png", "--instruction=x", "--steps=0"], "--steps"),
    ("edit", ["--source={sd3}", "--image={tmp}/good.png", "--instruction=x", "--method=sdedit"], "--method"),
    ("edit", ["--source={workdir}", "--image={tmp}/good.png", "--instruction=x", "--method=bogus"], "--method"),
    ("edit", ["--source={workdir}", "--image={tmp}/good.png", "--instruction=x", "--out={tmp}/a_file"], "--out"),
    ("edit", ["--source={workdir}", "--image={tmp}/good.png", "--instruction=x",
              "--out={tmp}/out_with_outputs"], "--overwrite"),
    ("edit", ["--source={workdir}", "--image={tmp}/good.png", "--instruction=x", "--seed=1.5"], "--seed"),
    # --- python -m mmdit_jax.train_autoencoder
    ("train_autoencoder", ["--config={tmp}/missing.py", "--workdir={new}"], "--config"),
    ("train_autoencoder", ["--config=configs/vae_shapes.py:tinyy", "--workdir={new}"], "tinyy"),
    ("train_autoencoder", ["--config=configs/vae_shapes.py:tiny", "--config.vae.nosuch=1", "--workdir={new}"],
     "nosuch"),
    ("train_autoencoder", ["--config=configs/vae_shapes.py:tiny"], "--workdir"),
    ("train_autoencoder", ["--config=configs/vae_shapes.py:tiny", "--workdir={new}", "--bogus"], "bogus"),
    ("train_autoencoder", ["--config=configs/vae_shapes.py:tiny", "--workdir={new}", "extra"], "extra"),
    # --- the study's command line
    ("study", ["--steps=5"], "--steps"),
    ("study", ["--bogus=1"], "bogus"),
    ("study", ["--steps=x"], "--steps"),
]


def _fill(text: str, files: dict, tmp_path) -> str:
    return text.format(tmp=files["tmp"], sd3=files["sd3"], workdir=files["workdir"], weights=files["weights"],
                       new=tmp_path / "new_workdir", out=tmp_path / "new_out")


@pytest.mark.parametrize("entry,args,named", CASES, ids=[f"{e}:{' '.join(a)}" for e, a, _ in CASES])
def test_bad_input_is_one_line_naming_the_argument_and_changes_nothing(entry, args, named, files, tmp_path,
                                                                       monkeypatch, capsys):
    monkeypatch.chdir(ROOT)       # relative config paths, as the README's commands use them
    args = [_fill(a, files, tmp_path) for a in args]
    watched = (tmp_path, files["tmp"], files["workdir"], files["sd3"])
    before = snapshot(*watched)
    capsys.readouterr()
    status = run_in_process(entry, args, monkeypatch)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert _fill(named, files, tmp_path) in lines[0], lines[0]
    assert snapshot(*watched) == before


def test_verbosity_1_shows_the_error_itself(files, tmp_path, monkeypatch):
    body = _fresh_command("generate")
    monkeypatch.setattr(sys, "argv", ["generate", "--notuned_runtime", "--verbosity=1", f"--source={files['sd3']}",
                                      "--prompt=a", "--lora_scale=nan"])
    with pytest.raises(ConfigError, match="--lora_scale"):
        harness.run_command(body)


def test_the_console_script_runs_the_readme_command_from_the_repository_root(tmp_path):
    """``mmdit-jax --config=configs/default.py...`` with no PYTHONPATH: config files importing ``configs.x`` load;
    ``--mode=sample`` on a fresh workdir reads nothing but the config and refuses for want of a checkpoint."""
    script = shutil.which("mmdit-jax") or os.path.join(os.path.dirname(sys.executable), "mmdit-jax")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([script, "--config=configs/default.py:tiny", f"--workdir={tmp_path / 'w'}", "--mode=eval",
                           "--notuned_runtime"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no checkpoint in" in proc.stderr and "No module named" not in proc.stderr, proc.stderr[-2000:]
