"""The profile summariser on synthetic traces: busy time is the union over streams, kinds by kernel name; an
XLA:CPU trace's per-op events on its worker threads stand in for device kernels."""

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


def test_cpu_trace_uses_the_per_op_events_of_the_worker_threads(tmp_path):
    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 5, "args": {"name": "tf_XLAEigen/123"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 6, "args": {"name": "python"}}]
    ops = [{"ph": "X", "pid": 1, "tid": 5, "ts": 0.0, "dur": 30.0, "name": "ynn_fusion.12"},
           {"ph": "X", "pid": 1, "tid": 5, "ts": 30.0, "dur": 10.0, "name": "multiply_add_fusion.3"},
           {"ph": "X", "pid": 1, "tid": 5, "ts": 0.0, "dur": 40.0, "name": "ThunkExecutor::Execute"},  # runtime
           {"ph": "X", "pid": 1, "tid": 6, "ts": 0.0, "dur": 50.0, "name": "PjitFunction(step)"}]      # not a worker
    path = tmp_path / "perfetto_trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": meta + ops}, f)
    assert [e["name"] for e in device_kernels(meta + ops)] == ["ynn_fusion.12", "multiply_add_fusion.3"]
    text = summarise(str(path), top=5)
    assert "| matmul | 0.03 | 75.0% | 1 |" in text and "| elementwise fusion | 0.01 | 25.0% | 1 |" in text


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


HLO = """HloModule jit_step, entry_computation_layout={()->f32[]}

%fused_computation.1 (param_0.1: f32[8,16], param_1.1: f32[16,4]) -> f32[8,4] {
  %param_0.1 = f32[8,16]{1,0} parameter(0)
  %param_1.1 = f32[16,4]{1,0} parameter(1)
  ROOT %dot.2 = f32[8,4]{1,0} dot(%param_0.1, %param_1.1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main.9 (x: f32[8,16], w: f32[16,4], g: f32[3,8,5]) -> f32[8,4] {
  %x = f32[8,16]{1,0} parameter(0)
  %w = f32[16,4]{1,0} parameter(1)
  %g = f32[3,8,5]{2,1,0} parameter(2)
  %ynn_fusion.1 = f32[8,4]{1,0} fusion(%x, %w), kind=kCustom, calls=%fused_computation.1, metadata={op_name="jit(step)/blocks_0/proj/dot_general"}
  %dot.7 = f32[3,5,5]{2,1,0} dot(%g, %g), lhs_batch_dims={0}, lhs_contracting_dims={1}, rhs_batch_dims={0}, rhs_contracting_dims={1}, metadata={op_name="jit(step)/blocks_1/proj/dot_general"}
  ROOT %add.3 = f32[8,4]{1,0} add(%ynn_fusion.1, %ynn_fusion.1), metadata={op_name="jit(step)/add"}
}
"""


def test_hlo_ops_name_the_source_op_and_count_product_flops():
    from experiments.benchmarks.hlo_ops import hlo_ops
    from experiments.benchmarks.trace_summary import by_source_op

    ops = hlo_ops(HLO)
    assert ops["ynn_fusion.1"] == ("jit(step)/blocks_0/proj/dot_general", 2 * 8 * 4 * 16)   # the fused dot
    assert ops["dot.7"] == ("jit(step)/blocks_1/proj/dot_general", 2 * 3 * 5 * 5 * 8)      # batched, contracts 8
    assert ops["add.3"] == ("jit(step)/add", 0)
    events = [{"name": "ynn_fusion.1", "dur": 2.0}, {"name": "dot.7", "dur": 1.0}, {"name": "add.3", "dur": 1.0}]
    table = "\n".join(by_source_op(events, ops, top=5, steps=1))
    # both layers' products merge into one row: 1712 FLOP in 3 us
    assert "| `blocks_*/proj/dot_general` | 0.00 | 2 | 0.00 | 1 |" in table
