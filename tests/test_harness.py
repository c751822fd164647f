"""The command harness (mmdit_jax/harness.py) on every entry point, each run as a program in a subprocess with input
that fails before any model is built:

* ``--tuned_runtime`` / ``--notuned_runtime`` is a flag of all five commands (an unknown flag is refused before the
  command runs), and it turns ``mmdit_jax.runtime``'s settings on and off;
* a positional argument is refused (one line, exit status 2, the argument named) before the command runs:
  without the check each of these command lines would fail later with a different error;
* bad input is exactly one line ``error: ...`` on stderr naming the flag, exit status 2.

The subprocesses run concurrently (the file's time is about that of its slowest command).
"""

import os
import subprocess
import sys

import pytest
from absl import app

from mmdit_jax.harness import command_main
from mmdit_jax.runtime import MULTI_OUTPUT_FUSION

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The study's command line is a library function (mmdit_jax.study.cli.run_experiment) that the experiments call;
# this program calls it with a toy-mode run that records the XLA flags the command left for JAX.
STUDY = """
import os
from mmdit_jax.study.cli import run_experiment

def run(config, workdir, outdir):
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "RESULTS.md"), "w") as f:
        f.write(os.environ.get("XLA_FLAGS", ""))

run_experiment(run, "unused", folder_run=lambda settings, outdir: {})
"""


def _commands(tmp) -> dict:
    """Per entry point: (program, bad input, the flag its error names, a command line whose command fails if it
    runs: the positional-argument case)."""
    missing, nowhere, bogus = str(tmp / "missing"), str(tmp / "nowhere"), str(tmp / "bogus.py")
    # a config every command rejects, quick to load (the repository's configs import JAX and Flax)
    with open(bogus, "w") as f:
        f.write("import ml_collections\n\ndef get_config():\n    return ml_collections.ConfigDict({'bogus': 1})\n")
    return {
        "mmdit_jax": (["-m", "mmdit_jax"], [f"--config={missing}.py:tiny", f"--workdir={tmp / 'train'}"],
                      "--config", [f"--config={bogus}", f"--workdir={tmp / 'train'}"]),
        # overrides make ml_collections load the config file while parsing (not at first use)
        "train_autoencoder": (["-m", "mmdit_jax.train_autoencoder"],
                              [f"--config={missing}.py", "--config.loss.kl_weight=0.1", f"--workdir={tmp / 'vae'}"],
                              "--config", [f"--config={bogus}", f"--workdir={tmp / 'vae'}"]),
        "generate": (["-m", "mmdit_jax.generate"], [f"--source={tmp}", f"--prompt_file={missing}.txt"],
                     "prompt_file", [f"--source={tmp}", f"--prompt_file={missing}.txt"]),
        "edit": (["-m", "mmdit_jax.edit"], [f"--source={nowhere}", f"--image={missing}.png", "--instruction=x"],
                 "source", [f"--source={nowhere}", f"--image={missing}.png", "--instruction=x"]),
        "study": (["-c", STUDY], ["--prompts=prompts.txt"], "--prompts", ["--prompts=prompts.txt"]),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """``{(entry point, case): CompletedProcess-like (returncode, stdout, stderr)}``."""
    tmp = tmp_path_factory.mktemp("harness")
    # the test session applied the runtime settings to its own XLA_FLAGS; the commands must apply them themselves
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "").replace(MULTI_OUTPUT_FUSION, "").strip())
    lines = {}
    for name, (program, bad, _, failing) in _commands(tmp).items():
        lines[name, "bad"] = [*program, "--tuned_runtime=false", *bad]
        lines[name, "positional"] = [*program, "--notuned_runtime", *failing, "extra"]
    for case, flag in (("tuned", "--tuned_runtime"), ("untuned", "--notuned_runtime")):
        lines["study", case] = ["-c", STUDY, flag, f"--outdir={tmp / case}"]
    procs = {key: subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for key, argv in lines.items()}
    out = {}
    for key, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=240)
        out[key] = subprocess.CompletedProcess(lines[key], proc.returncode, stdout, stderr)
    return out


ENTRY_POINTS = ("mmdit_jax", "train_autoencoder", "generate", "edit", "study")


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_bad_input_is_one_line_naming_the_flag_with_exit_status_2(runs, tmp_path, name):
    flag = _commands(tmp_path)[name][2]
    proc = runs[name, "bad"]
    # the flag named (not "tuned_runtime") also says absl took --tuned_runtime=false
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], proc.stderr[-2000:]


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_a_positional_argument_is_one_line_with_exit_status_2(runs, name):
    proc = runs[name, "positional"]
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unexpected arguments ['extra']"), proc.stderr[-2000:]


def test_tuned_runtime_flag_turns_the_runtime_settings_on_and_off(runs):
    tuned, untuned = runs["study", "tuned"], runs["study", "untuned"]
    assert tuned.returncode == 0 and untuned.returncode == 0, (tuned.stderr[-2000:], untuned.stderr[-2000:])
    # the tests run on the CPU, where configure_runtime adds multi-output fusion to XLA_FLAGS
    assert MULTI_OUTPUT_FUSION in tuned.stdout.split()
    assert MULTI_OUTPUT_FUSION not in untuned.stdout.split()


def test_positional_arguments_are_rejected_before_the_command_runs():
    ran = []
    with pytest.raises(app.UsageError, match=r"unexpected arguments \['a', 'b'\]"):
        command_main(lambda: ran.append(1))(["program", "a", "b"])
    assert not ran
