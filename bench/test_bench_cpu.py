"""CI-size smoke benchmarks (pytest-benchmark): rnnfast and torch, lstm/gru/rnn, inference and
training, on tiny shapes; ONNX Runtime and OpenVINO (inference only) when they are installed.

    pytest bench/test_bench_cpu.py --benchmark-only          # timings, grouped cell-mode-shape
    pytest bench/test_bench_cpu.py                           # same, fast; also checks parity
    pytest bench/test_bench_cpu.py --benchmark-disable       # run each body once (pure smoke)

These live in bench/ so `pytest tests` never collects them. Each test runs a fixed, small number
of rounds (RNNFAST_BENCH_ROUNDS, default 20) so the whole file takes seconds. Numbers from here are
for spotting gross regressions only; use bench/bench_cpu.py (interleaved, medians) for real
comparisons. rnnfast tests are skipped, torch tests still run, when rnnfast cannot be imported;
onnxruntime / openvino tests are skipped when those packages (and onnx) are not installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import cases, checks, registry  # noqa: E402
from harness.runners import Unsupported  # noqa: E402

ROUNDS = int(os.environ.get("RNNFAST_BENCH_ROUNDS", "20"))
SEED = 0

# Tiny shapes: one plain B=1 case, one batched 2-layer bidirectional case, one packed batch.
CASES = {
    "T16B1I16H32": cases.Case(16, 1, 16, 32),
    "T8B4I16H16-2Lbi": cases.Case(8, 4, 16, 16, layers=2, bidirectional=True),
    "T12B4I16H16-packed": cases.Case(12, 4, 16, 16, variant="packed",
                                     lengths=cases.mixed_lengths(12, 4, SEED)),
}


def _impl_or_skip(name: str):
    if name not in registry.IMPLEMENTATIONS:   # bench/harness/onnx_peers.py did not load
        pytest.skip(f"{name} not registered: {registry.PEERS_ERR}")
    ok, why = registry.IMPLEMENTATIONS[name].available()
    if not ok:
        pytest.skip(f"{name} unavailable: {why}")
    return registry.IMPLEMENTATIONS[name]


@pytest.mark.parametrize("case_id", list(CASES))
@pytest.mark.parametrize("mode", cases.MODES)
@pytest.mark.parametrize("cell", cases.CELLS)
@pytest.mark.parametrize("impl", ["rnnfast", "torch", "onnxruntime", "openvino"])
def test_rnn(benchmark, impl, cell, mode, case_id):
    case = CASES[case_id]
    ref_mod = cases.make_reference(cell, case, SEED)
    inputs = cases.make_inputs(case, SEED)
    try:
        runner = _impl_or_skip(impl).factory(cell, case, mode, ref_mod)
    except Unsupported as e:   # the ONNX peers are inference-only
        pytest.skip(f"{impl}: {e}")
    if impl != registry.BASELINE:
        reference = registry.torch_factory(cell, case, mode, ref_mod)
        ok, details = checks.check(runner, reference, inputs, mode)
        assert ok, f"{impl} does not match torch: {checks.describe_mismatch(details)} ({details})"
    fn = runner.infer if mode == "inference" else runner.train
    benchmark.group = f"{cell}-{mode}-{case_id}"
    benchmark.extra_info.update({"impl": impl, "flops": case.flops(cell, mode),
                                 "threads": torch.get_num_threads()})
    benchmark.pedantic(fn, args=(inputs,), rounds=ROUNDS, iterations=1, warmup_rounds=2)


def test_flop_count():
    """The GFLOP/s columns depend on this; pin it (also runs under --benchmark-disable)."""
    c = cases.Case(10, 2, 3, 5)
    assert c.forward_flops("lstm") == 2 * 10 * 2 * 4 * 5 * (3 + 5)
    assert c.flops("gru", "training") == 3 * 2 * 10 * 2 * 3 * 5 * (3 + 5)
    bi = cases.Case(10, 2, 3, 5, layers=2, bidirectional=True)
    assert bi.forward_flops("rnn") == 2 * 2 * 10 * 2 * 5 * ((3 + 5) + (10 + 5))
    p = cases.Case(10, 2, 3, 5, variant="packed", lengths=(10, 4))
    assert p.forward_flops("rnn") == 2 * 14 * 5 * (3 + 5)
