"""``retain_freed_host_memory`` removes XLA:CPU's per-execution page faults (mmdit_jax/host_memory.py).

Oracle: the kernel's count of minor page faults (``getrusage``) per call of a compiled function whose
temporaries (108 MB) exceed glibc's 64 MB per-thread arena limit, in a fresh process with and without the setting.
"""

import json
import platform
import subprocess
import sys
import warnings

import jax.numpy as jnp
import pytest

from mmdit_jax import host_memory

_PROBE = """
import json, resource, sys
if sys.argv[1] == "retain":
    from mmdit_jax.host_memory import retain_freed_host_memory
    assert retain_freed_host_memory()
import jax, jax.numpy as jnp
n = 3072
f = jax.jit(lambda x: ((x + 1.0) @ (x * 2.0)).sum())
x = jnp.ones((n, n))
for _ in range(2):
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    f(x).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3
print(json.dumps({"faults_per_call": faults, "temp_pages": 3 * n * n * 4 // 4096}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_retained_memory_removes_per_call_page_faults():
    default, retained = _probe("default"), _probe("retain")
    if default["faults_per_call"] < default["temp_pages"]:
        pytest.skip(f"this glibc/XLA does not re-fault temporaries ({default}); nothing to compare against")
    assert retained["faults_per_call"] < 0.01 * retained["temp_pages"], (default, retained)


def test_warns_when_jax_already_runs_and_is_a_no_op_off_glibc(monkeypatch):
    jnp.ones(1).block_until_ready()  # backends are up in this process
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        with pytest.warns(UserWarning, match="before the first JAX computation"):
            host_memory.retain_freed_host_memory()
    monkeypatch.setattr(host_memory.platform, "system", lambda: "Darwin")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert host_memory.retain_freed_host_memory() is False
