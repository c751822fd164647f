import atexit
import os
import shutil
import tempfile

# Tests run on the CPU; keep XLA from grabbing all cores for intra-op threads beyond what the machine has.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache per test session, fresh each run (never reused across runs) and removed at
# exit, shared with the pytest-xdist workers (they inherit it from the controller, which loads this file first) and
# the subprocess tests (resume after SIGKILL, two processes, four devices), which otherwise
# compile the same programs once per process: ~50 s off the suite. Every compile is stored (threshold 0): each
# subprocess also compiles a few hundred small programs (eager initialisation, metrics), ~40 s more over the suite.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="mmdit_jax_test_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# Most of the suite's CPU time is XLA compiling small programs. LLVM optimisation level 1 instead of XLA:CPU's
# default keeps the same floating-point semantics (no fast-math either way: no reassociation, no contraction), and
# measured on this suite's tests it takes ~10% less CPU time in compile-bound and run-bound tests alike (level 0
# halves compile time but doubles the run time of the training-heavy tests). Set here, before JAX starts, so the
# xdist workers and the subprocess tests inherit it; a user's own XLA_FLAGS choice of the option wins.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=1".strip()

# What the training entry point does before its first JAX computation (mmdit_jax/runtime.py): without it
# every compiled call re-faults its temporaries page by page.
from mmdit_jax.runtime import configure_runtime  # noqa: E402

configure_runtime()


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_base_run(tmp_path_factory):
    """``(config, workdir)`` of a trained ``configs/default.py:tiny`` run (6 steps, checkpoints 3 and 6), the base
    of the fine-tuning tests and the workdir of the generate tests. Read-only: a test that trains it further or
    deletes from it needs its own run."""
    from configs.default import get_config as default_config
    from mmdit_jax.train import loop

    workdir = str(tmp_path_factory.mktemp("tiny_base"))
    cfg = default_config("tiny")
    cfg.train.sample_every = 0
    loop.train(cfg, workdir)
    return cfg, workdir


@pytest.fixture(scope="session")
def tiny_sd3_folder(tmp_path_factory):
    """A tiny random diffusers SD3 pipeline folder (``save_pretrained``): the ``tests/pipelines/tiny_sd3.py``
    components without T5, scheduler shift 3.0. Saved once per session and read-only: a test that writes into it
    copies it first (``shutil.copytree``)."""
    diffusers = pytest.importorskip("diffusers")
    from tests.pipelines.tiny_sd3 import components

    path = tmp_path_factory.mktemp("tiny_sd3_folder")
    diffusers.StableDiffusion3Pipeline(**components(with_t5=False, shift=3.0)).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_flux_folder(tmp_path_factory):
    """A tiny random diffusers FLUX pipeline folder (``save_pretrained``): the ``tests/pipelines/tiny_flux.py``
    components of variant "dev". Saved once per session and read-only: a test that writes into it copies it first
    (``shutil.copytree``)."""
    diffusers = pytest.importorskip("diffusers")
    from tests.pipelines.tiny_flux import components

    path = tmp_path_factory.mktemp("tiny_flux_folder")
    diffusers.FluxPipeline(**components("dev")).save_pretrained(path)
    return path
