"""The profile summariser on a synthetic device trace: busy time is the union over streams, kinds by kernel name."""

import gzip
import json

from experiments.benchmarks.trace_summary import busy_time, device_kernels, kind_of, summarise


def _trace(tmp_path):
    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
            {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:0"}}]
    kernels = [  # two streams; the 10-20 us kernels overlap, 30-35 us is after a 10 us gap
        {"ph": "X", "pid": 2, "tid": 7, "ts": 0.0, "dur": 20.0, "name": "sm90_xmma_gemm_bf16bf16_bf16f32",
         "args": {"hlo_op": "custom-call.3"}},
        {"ph": "X", "pid": 2, "tid": 8, "ts": 10.0, "dur": 10.0, "name": "cudnn_generated_fort_native_sdpa_sm90",
         "args": {"hlo_op": "custom-call.9"}},
        {"ph": "X", "pid": 2, "tid": 7, "ts": 30.0, "dur": 5.0, "name": "loop_multiply_fusion",
         "args": {"hlo_op": "loop_multiply_fusion"}},
        {"ph": "X", "pid": 1, "tid": 1, "ts": 0.0, "dur": 100.0, "name": "PjitFunction(step)"},  # host: ignored
    ]
    path = tmp_path / "perfetto_trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": meta + kernels}, f)
    return str(path), meta + kernels


def test_busy_time_is_the_union_of_device_kernels(tmp_path):
    path, events = _trace(tmp_path)
    kernels = device_kernels(events)
    assert len(kernels) == 3  # the host event is not a device kernel
    assert busy_time(kernels) == 25.0  # [0, 20] and [30, 35]; the overlapping attention kernel adds nothing
    text = summarise(path, top=5)
    assert "device busy 0.0 ms per step (71.4%)" in text  # 25 of a 35 us window
    assert "| matmul | 0.02 | 57.1% | 1 |" in text


def test_kernel_kinds():
    assert kind_of("sm90_xmma_gemm_bf16 | custom-call.3 | ") == "matmul"
    assert kind_of("cudnn_generated_fort_native_sdpa | custom-call | ") == "attention"
    assert kind_of("input_reduce_fusion | reduce.1 | ") == "reduction fusion"
    assert kind_of("loop_add_fusion | add.2 | ") == "elementwise fusion"
    assert kind_of("dynamic_update_slice_fusion | | ") == "copy / slice"
    assert kind_of("some_kernel | | ") == "other"
    assert kind_of("loop_pad_fusion | pad.3 | ") == "copy / slice"
    assert kind_of("loop_dot_fusion | | ") == "matmul"
    assert kind_of("loop_broadcast_fusion | | ") == "elementwise fusion"
    assert kind_of("nvjet_sm90_tst_192x192_64x3_1x2_h_bz_coopB_NTN | command_buffer_356 | ") == "matmul"  # cuBLAS
