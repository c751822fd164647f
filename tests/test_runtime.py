"""``configure_runtime`` (mmdit_jax/runtime.py). The CPU settings, each against an oracle outside our code, in
fresh processes with and without it:

* host memory: the kernel's count of minor page faults (``getrusage``) in the median of 5 calls of a compiled
  function whose temporaries (79 MB) exceed glibc's 64 MB per-thread arena limit;
* multi-output fusion: the largest fused computation XLA compiles for the gradient of a 6-block residual
  chain (duplicated producers make it grow with depth).

The GPU setting is an XLA flag chosen by platform (its effect is a benchmark: experiments/benchmarks/RESULTS.md).
"""

import json
import os
import platform
import subprocess
import sys
import warnings

import jax.numpy as jnp
import pytest

from mmdit_jax import runtime

_PROBE = """
import json, re, resource, sys
if sys.argv[1] == "on":
    from mmdit_jax.runtime import configure_runtime
    configure_runtime()
import jax, jax.numpy as jnp

n = 2560
f = jax.jit(lambda x: ((x + 1.0) @ (x * 2.0)).sum())
x = jnp.ones((n, n))
for _ in range(2):
    f(x).block_until_ready()
per_call = []  # steady state: the median call (a call that grows the heap once faults its new pages once)
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    per_call.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = sorted(per_call)[2]

def loss(ws, x):
    for w in ws:
        x = x + 0.5 * jnp.tanh((x - jnp.mean(x, -1, keepdims=True)) @ w)
    return jnp.sum(x ** 2)
hlo = jax.jit(jax.grad(loss)).lower([jnp.ones((64, 64))] * 6, jnp.ones((128, 64))).compile().as_text()
largest = max(m.group(0).count("\\n") for m in re.finditer(r"^%fused_computation[\\w.]* .*?\\n\\}", hlo, re.M | re.S))
print(json.dumps({"faults_per_call": faults, "temp_pages": 3 * n * n * 4 // 4096, "largest_fusion": largest}))
"""


@pytest.fixture(scope="module")
def probes() -> dict:
    out = {}
    for mode in ("off", "on"):
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the test session sets it
        r = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        out[mode] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_retained_memory_removes_per_call_page_faults(probes):
    off, on = probes["off"], probes["on"]
    if off["faults_per_call"] < off["temp_pages"]:
        pytest.skip(f"this glibc/XLA does not re-fault temporaries ({off}); nothing to compare against")
    assert on["faults_per_call"] < 0.01 * on["temp_pages"], probes


def test_multi_output_fusion_stops_duplicating_the_residual_chain(probes):
    # Measured: 55 instructions in the largest fusion without, 21 with.
    assert probes["on"]["largest_fusion"] < 0.6 * probes["off"]["largest_fusion"], probes


def test_warns_when_jax_already_runs_and_respects_user_flags(monkeypatch):
    jnp.ones(1).block_until_ready()  # backends are up in this process
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    with pytest.warns(UserWarning, match="before the first JAX computation"):
        assert runtime.enable_multi_output_fusion()
    assert runtime.MULTI_OUTPUT_FUSION in os.environ["XLA_FLAGS"].split()
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_extra_options=something_else")
    assert runtime.enable_multi_output_fusion() is False  # the user's backend options are left alone
    assert os.environ["XLA_FLAGS"] == "--xla_backend_extra_options=something_else"
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")  # another accelerator computes: nothing is changed
    monkeypatch.setenv("XLA_FLAGS", "")
    assert not any(runtime.configure_runtime().values())
    assert os.environ["XLA_FLAGS"] == ""
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")  # an NVIDIA GPU: cuBLAS GEMMs only, no CPU settings
    with pytest.warns(UserWarning, match="before the first JAX computation"):
        assert runtime.configure_runtime() == {"retain_freed_host_memory": False, "multi_output_fusion": False,
                                               "cublas_gemms": True}
    assert os.environ["XLA_FLAGS"] == runtime.CUBLAS_GEMMS
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_triton_gemm=true")  # the user's choice stands
    assert runtime.use_cublas_gemms() is False and os.environ["XLA_FLAGS"] == "--xla_gpu_enable_triton_gemm=true"
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert runtime.expected_platform() == "cpu"
    monkeypatch.setattr(runtime.platform, "system", lambda: "Darwin")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.retain_freed_host_memory() is False
