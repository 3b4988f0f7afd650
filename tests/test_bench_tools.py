"""The benchmark harness pieces that decide what a sample is (bench/harness/timing.py), the
in-process A/B scripts (bench/variant_ab.py, bench/row_split_ab.py, bench/stream_ab.py,
bench/straight_ab.py) and
the two-build one (bench/build_ab.py): what they time, not how fast anything is."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from harness.timing import time_interleaved  # noqa: E402


class _Counting:
    """A runner whose call busy-waits `seconds` and counts its calls."""

    def __init__(self, seconds):
        self.seconds, self.calls = seconds, 0

    def infer(self, inputs):
        import time
        self.calls += 1
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            pass

    train = infer


def test_time_interleaved_blocks_are_per_implementation():
    fast, slow = _Counting(2e-4), _Counting(2e-3)
    samples, _ = time_interleaved({"fast": fast, "slow": slow}, "inference", None, budget=0.05,
                                  warmup=0.0, min_reps=3, max_reps=3, block=0.004)
    warm_fast, warm_slow = 2, 2  # the warm-up's calls: at least two each
    # about 4 ms of calls per sample (k = floor(4 ms / the warm-up's time per call), a little
    # over 0.2 and 2 ms): up to 20 of the fast one, 1-2 of the slow one, 3 samples each
    assert len(samples["fast"]) == len(samples["slow"]) == 3
    k_fast, rest = divmod(fast.calls - warm_fast, 3)
    assert rest == 0 and 5 <= k_fast <= 20, fast.calls
    k_slow, rest = divmod(slow.calls - warm_slow, 3)
    assert rest == 0 and 1 <= k_slow <= 2, slow.calls
    # a sample is the time per call, not per block
    assert all(1.5e-4 < t < 2e-3 for t in samples["fast"]), samples["fast"]
    assert all(1.8e-3 < t < 2e-2 for t in samples["slow"]), samples["slow"]


def test_time_interleaved_single_calls_by_default():
    r = _Counting(2e-4)
    samples, _ = time_interleaved({"r": r}, "inference", None, budget=0.05, warmup=0.0,
                                  min_reps=4, max_reps=4)
    assert len(samples["r"]) == 4 and r.calls == 2 + 4


def test_variant_ab_runs_and_reports_the_ratio():
    # the suite's own environment: rnnfast as this test process imports it (installed, or the
    # tree's python/ on PYTHONPATH)
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "variant_ab.py"), "--variant",
         "gru_layer_norm", "--config", "3,2,4,5", "--mode", "training", "--threads", "1,2",
         "--rounds", "2", "--calls", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if "ratio" in ln]
    assert [ln.split(":")[0].strip() for ln in lines] == ["threads=1", "threads=2"], out.stdout


def test_row_split_ab_runs_both_schedules_and_restores_the_environment(tmp_path):
    out_json = tmp_path / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "RNNFAST_ROW_SPLIT"}
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "row_split_ab.py"), "--configs", "4,8,4,8",
         "--cells", "GRU", "--rounds", "2", "--block-ms", "1", "--packed", "--out",
         str(out_json)], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    import json
    rows = json.loads(out_json.read_text())["rows"]
    assert [(r["cell"], r["mode"], r["packed"]) for r in rows] == [
        ("GRU", "inference", True), ("GRU", "training", True)]
    for r in rows:
        assert r["row_split_ms"] > 0 and r["strip_split_ms"] > 0
        assert abs(r["ratio"] - r["row_split_ms"] / r["strip_split_ms"]) < 1e-12
    assert set(rows[1]["planner_row_split"]) == {"forward", "backward"}
    # it refuses to run with the schedule already forced (its A/B would be meaningless)
    forced = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "row_split_ab.py"), "--configs", "4,8,4,8"],
        capture_output=True, text=True, timeout=300, env={**env, "RNNFAST_ROW_SPLIT": "1"})
    assert forced.returncode == 2 and "RNNFAST_ROW_SPLIT" in forced.stderr


def test_build_ab_times_both_builds_and_refuses_a_path_without_rnnfast(tmp_path):
    import json
    import rnnfast
    build = os.path.dirname(os.path.dirname(os.path.abspath(rnnfast.__file__)))
    out_json = tmp_path / "ab.json"
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "build_ab.py"), "--a", build, "--b", build,
         "--layer", "gru,3,2,4,5", "--cell", "lstm,2,8,float64", "--rounds", "2",
         "--block-ms", "1", "--threads", "1", "--modes", "inference,training,training_data",
         "--out", str(out_json)],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out_json.read_text())["rows"]
    assert [(r["case"]["kind"], r["case"]["mode"]) for r in rows] == [
        ("layer", "inference"), ("layer", "training"), ("layer", "training_data"),
        ("cell", "inference"), ("cell", "training"), ("cell", "training_data")]
    for r in rows:
        assert len(r["a_ms"]) == len(r["b_ms"]) == 2
        assert abs(r["b_over_a"] - r["b_median_ms"] / r["a_median_ms"]) < 1e-12
    # a run-time switch: the same build, each side with its own environment
    switched = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "build_ab.py"), "--a", build, "--b", build,
         "--a-env", "RNNFAST_GEMM_ROWS=0", "--b-env", "RNNFAST_GEMM_ROWS=1", "--cell", "gru,1,8",
         "--modes", "training",
         "--rounds", "2", "--block-ms", "1", "--threads", "1", "--out", str(out_json)],
        capture_output=True, text=True, timeout=300)
    assert switched.returncode == 0, switched.stderr
    ab = json.loads(out_json.read_text())
    assert ab["a_env"] == {"RNNFAST_GEMM_ROWS": "0"}
    assert ab["b_env"] == {"RNNFAST_GEMM_ROWS": "1"}
    assert ab["a_info"]["cpu_gemm_rows"] is False and ab["b_info"]["cpu_gemm_rows"] is True
    unknown = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "build_ab.py"), "--a", build, "--b", build,
         "--cell", "gru,1,8", "--modes", "training,train"], capture_output=True, text=True,
        timeout=300)
    assert unknown.returncode == 2 and "unknown mode(s) ['train']" in unknown.stderr
    # a directory without a build: the worker would import another rnnfast, so it refuses
    bad = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "build_ab.py"), "--a", str(tmp_path),
         "--b", build, "--layer", "gru,3,2,4,5"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "holds no rnnfast build" in bad.stderr + bad.stdout


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_stream_ab_times_only_the_rows_the_plan_streams(isa):
    import rnnfast
    if not rnnfast._C.cpu_supports(isa):
        pytest.skip(f"this CPU has no {isa}")
    env = {k: v for k, v in os.environ.items() if k != "RNNFAST_STREAM_WS"}
    # 1.75 KB and 46 MB of float32 workspace (6,400 rows of 1,792 values)
    rows = ["lstm,4,2,4,8", "lstm,200,32,64,256"]
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "stream_ab.py"),
                          "--rounds", "2", "--calls", "1", "--rows", *rows],
                         capture_output=True, text=True, timeout=300,
                         env={**env, "RNNFAST_SIMD": isa})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"# {isa},"), out.stdout
    assert lines[1] == "lstm 4,2,4,8: not streamed by the plan on this path", out.stdout
    # only vectors that fill a cache line stream (layer_impl.h: make_forward_plan); there the
    # script has checked that RNNFAST_STREAM_WS=0 turns the plan's streaming off (else exit 3)
    if isa == "avx512":
        assert lines[2].startswith("lstm 200,32,64,256: streamed ") and "plain/streamed" in lines[2]
    else:
        assert lines[2] == "lstm 200,32,64,256: not streamed by the plan on this path"


def test_stream_ab_refuses_a_forced_side_and_bad_arguments():
    env = {k: v for k, v in os.environ.items() if k != "RNNFAST_STREAM_WS"}
    script = os.path.join(ROOT, "bench", "stream_ab.py")
    forced = subprocess.run([sys.executable, script, "--rows", "lstm,4,2,4,8"],
                            capture_output=True, text=True, timeout=300,
                            env={**env, "RNNFAST_STREAM_WS": "0"})
    assert forced.returncode == 2 and "RNNFAST_STREAM_WS" in forced.stderr
    for bad, says in ((["--rows", "lstm,4,2"], "expected cell,T,B,I,H"),
                      (["--rows", "lstm,4,0,4,8"], "T,B,I,H must be positive integers"),
                      (["--rounds", "0"], "expected a positive integer")):
        out = subprocess.run([sys.executable, script, *bad], capture_output=True, text=True,
                             timeout=300, env=env)
        assert out.returncode == 2 and says in out.stderr, out.stderr


def test_straight_ab_times_both_routes_and_torch():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "straight_ab.py"),
                          "--rounds", "2", "--block-ms", "0.5", "--dtypes", "float32,float64",
                          "--rows", "lstm,1,8", "gru,3,8"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("# ") and "2 rounds" in lines[0], out.stdout
    rows = lines[1:]
    assert [r.split(":")[0] for r in rows] == [
        "lstm float32 B=1 H=8", "gru float32 B=3 H=8", "lstm float64 B=1 H=8",
        "gru float64 B=3 H=8"], out.stdout
    for r in rows:
        for key in ("straight ", "full ", "torch ", "straight/full ", "straight/torch "):
            assert key in r, r


def test_straight_ab_refuses_bad_arguments():
    script = os.path.join(ROOT, "bench", "straight_ab.py")
    for bad, says in ((["--rows", "lstm,1"], "expected cell,B,H"),
                      (["--rows", "rnn,1,8"], "cell must be one of"),
                      (["--rows", "gru,0,8"], "B and H must be positive integers"),
                      (["--rounds", "0"], "--rounds must be >= 1")):
        out = subprocess.run([sys.executable, script, *bad], capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 2 and says in out.stderr, (bad, out.stderr)


def test_bench_cpu_float64_grid_runs_both_in_float64(tmp_path):
    """--dtype float64: both modules and the input in float64, checked with the float64
    tolerances, the DGEMM rate, the ONNX peers n/a, and a results file of its own name."""
    import json
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "bench_cpu.py"), "--dtype", "float64",
         "--config", "6,2,5,7:2L+bi", "--cells", "lstm,gru", "--threads", "1", "--quick",
         "--no-png", "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "DGEMM (torch.mm 1024x1024 float64)" in out.stdout, out.stdout
    files = list(tmp_path.glob("cpu-f64-*.json"))
    assert len(files) == 1, list(tmp_path.iterdir())
    res = json.loads(files[0].read_text())
    assert res["settings"]["dtype"] == "float64" and res["settings"]["out_atol"] == 1e-10
    assert res["sgemm"]["start"]["dtype"] == "float64"
    if os.path.abspath(res["rnnfast"]["file"]).startswith(ROOT + os.sep):  # timed this checkout
        import re
        assert re.fullmatch(r"[0-9a-f]{7,}(-dirty)?", res["rnnfast"]["commit"] or ""), res["rnnfast"]
    assert len(res["results"]) == 4
    for row in res["results"]:
        assert row["check"]["status"] == "ok", row["check"]
        for peer in ("onnxruntime", "openvino"):
            if peer in row["impls"]:
                assert "unsupported" in row["impls"][peer], row["impls"][peer]
        # a float32 rnnfast would differ from float64 torch by about 1e-7
        assert row["check"]["details"]["rnnfast"]["out"] < 1e-12, row["check"]


def test_bench_check_refuses_another_dtype():
    """The grid's check fails a runner whose outputs are in another dtype than torch's, however
    close the values."""
    import torch
    from harness import cases, checks, registry
    case = cases.Case(4, 2, 3, 5)
    ref = cases.make_reference("lstm", case, 0, torch.float64)
    inputs = cases.make_inputs(case, 0, torch.float64)
    torch_runner = registry.torch_factory("lstm", case, "inference", ref)

    class Float32(type(torch_runner)):
        def infer(self, inputs):
            return tuple(t.float() if t is not None else None for t in super().infer(inputs))

    ok, det = checks.check(Float32(ref), torch_runner, inputs, "inference")
    assert not ok and det["out_dtype"] == "torch.float32 against torch.float64", det
    assert "out_dtype" in checks.describe_mismatch(det)
    ok, det = checks.check(torch_runner, torch_runner, inputs, "inference")
    assert ok, det


def _grid_row(cell, mode, B, H, times, layers=1, bi=False, tag="-", flops=1e9):
    return {"cell": cell, "mode": mode, "tag": tag, "flops": flops,
            "case": {"T": 10, "B": B, "I": 8, "H": H, "layers": layers, "bidirectional": bi},
            "impls": {k: {"median_ms": v} for k, v in times.items()}}


def test_targets_sorts_rows_into_met_and_missed_with_the_needed_rate(tmp_path):
    """bench/targets.py: each target's rows, met or missed, and for a miss the rate (GFLOP/s,
    % of the run's GEMM rate, % of the given peak) that would meet it."""
    import json
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import targets
    run = {"schema": "rnnfast-bench-cpu/1", "threads": 2,
           "implementations": ["rnnfast", "torch", "rnnfast-avx2", "onnxruntime"],
           "peers": {"onnxruntime": {}}, "rnnfast": {"simd": "avx512"},
           "machine": {"avx512f": True}, "settings": {"dtype": "float32"},
           "sgemm": {"used_gflops": 200.0},
           "results": [
               # 2-layer: 0.7 met, 0.8 missed (1 GFLOP in 8 ms = 125 GFLOP/s; needs 125 * 0.8 /
               # 0.75); the avx2 column at 0.74 meets it
               _grid_row("lstm", "inference", 8, 64, {"rnnfast": 8.0, "torch": 10.0,
                                                      "rnnfast-avx2": 7.4, "onnxruntime": 7.0},
                         layers=2, tag="2L"),
               _grid_row("gru", "training", 8, 64, {"rnnfast": 7.0, "torch": 10.0,
                                                    "rnnfast-avx2": 4.1},
                         bi=True, tag="bi"),
               # single layer: only the avx2 targets; LSTM B <= 16 at 0.6 exactly is met
               _grid_row("lstm", "training", 16, 256, {"rnnfast": 5.0, "torch": 10.0,
                                                       "rnnfast-avx2": 6.0}),
               _grid_row("lstm", "inference", 32, 256, {"rnnfast": 5.0, "torch": 10.0,
                                                        "rnnfast-avx2": 10.5, "onnxruntime": 11}),
           ]}
    res = {t["target"]: t for t in targets.check_run(run, peak=400.0)}
    two = res["avx512: 2-layer and bidirectional <= 0.75"]
    assert two["met"] == 1 and [m["row"] for m in two["missed"]] == [
        "lstm inference 10,8,8,64 2L"], two
    miss = two["missed"][0]
    assert miss["gflops"] == pytest.approx(125.0)
    assert miss["need_gflops"] == pytest.approx(125.0 * 0.8 / 0.75)
    assert miss["need_pct_gemm"] == pytest.approx(100 * 125.0 * 0.8 / 0.75 / 200.0)
    assert miss["need_pct_peak"] == pytest.approx(100 * 125.0 * 0.8 / 0.75 / 400.0)
    avx2_two = res["avx2: 2-layer and bidirectional <= 0.75"]
    assert avx2_two["met"] == 2 and not avx2_two["missed"]
    every = res["avx2: every row <= 1"]
    assert every["met"] == 3 and [m["row"] for m in every["missed"]] == [
        "lstm inference 10,32,8,256"]
    # the avx2 column of an AVX-512 CPU against half the peak
    assert every["missed"][0]["need_pct_peak"] == pytest.approx(
        100 * (1e9 / 10.5e-3 / 1e9) * 1.05 / 200.0)
    small = res["avx2: LSTM at B <= 16 or H <= 128 <= 0.6"]
    assert small["met"] == 1 and len(small["missed"]) == 1     # 0.6 met, 0.74 missed
    gru = res["avx2: GRU training <= 0.4"]
    assert gru["met"] == 0 and gru["missed"][0]["ratio"] == pytest.approx(0.41)
    ort = res["avx2: inference no slower than onnxruntime"]
    assert ort["met"] == 1 and ort["missed"][0]["ratio"] == pytest.approx(7.4 / 7.0)
    assert "avx512: every row <= 1" not in res   # the AVX2-only targets are the AVX2 path's

    # float64 runs: every row <= 1 on each path
    f64 = dict(run, settings={"dtype": "float64"}, peers={})
    names = [t["target"] for t in targets.check_run(f64, peak=None)]
    assert names == ["float64 avx512: every row <= 1", "float64 avx2: every row <= 1"]

    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "targets.py"), str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "avx512: 2-layer and bidirectional <= 0.75: met 1 of 2" in out.stdout, out.stdout
    path.write_text(json.dumps({"schema": "rnnfast-cells/1"}))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "targets.py"), str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not a bench_cpu.py result" in out.stderr
