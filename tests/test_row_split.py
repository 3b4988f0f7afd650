"""The row split schedule (LayerPlan::row_split in csrc/core/cpu/layer_impl.h): each thread owns
whole batch rows for the whole call and the steps run without a barrier.

Its results must be bit for bit those of the (row block, strip) schedule and of one thread:
outputs, final states and every gradient, for every cell family and variant (projection, layer
normalisation, peephole and coupled gates, zoneout's training masks), dense and packed (unsorted
lengths, so rows go inactive at different steps), in both directions, at 1, 2 and 3 threads, on
every SIMD path this CPU has. RNNFAST_ROW_SPLIT=1/0 forces the schedule either way (the planner
reads it on every call), so both schedules run at every thread count whatever the sizes' choice.

B = 16 rows give row blocks of 8 (2 threads) and 6, 6, 4 (3 threads): not multiples of any
path's register tile height (MR = 4, 6, 12), so the per-block panels' padding is exercised.
"""
from __future__ import annotations

import os

import pytest
import torch

import rnnfast
from rnn_testutils import (ATOL, SIMD_PATHS, assert_results_close, call_dense, call_packed, fwd_bwd, hx_shapes, randn,
                           simd_path)

CASES = {
    "lstm": ("LSTM", {}),
    "lstm_proj": ("LSTM", {"proj_size": 20}),
    "lstm_ln": ("LSTM", {"layer_norm": True}),
    "lstm_peephole_coupled_zoneout": ("LSTM", {"peephole": True, "coupled_gates": True,
                                               "zoneout": (0.2, 0.1)}),
    "lstm_ln_proj_zoneout": ("LSTM", {"layer_norm": True, "proj_size": 20, "zoneout": 0.15}),
    "gru": ("GRU", {}),
    "gru_ln_zoneout": ("GRU", {"layer_norm": True, "zoneout": 0.2}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
}
T, B, I, H = 7, 16, 24, 48
LENGTHS = [3, 7, 1, 5, 7, 2, 6, 4, 7, 1, 3, 5, 2, 6, 4, 7]  # unsorted


def _build(name, dtype, batch=B):
    kind, kw = CASES[name]
    torch.manual_seed(0)
    m = getattr(rnnfast, kind)(I, H, bidirectional=True, dtype=dtype, **kw)
    m.train()  # zoneout draws its masks (from the seed _run sets)
    lstm = kind == "LSTM"
    leaves = {"x": randn(T, batch, I, dtype=dtype, seed=1)}
    hs, cs = hx_shapes(kind, 1, True, batch, H, kw.get("proj_size", 0))
    leaves["h0"] = randn(*hs, dtype=dtype, seed=2)
    if cs is not None:
        leaves["c0"] = randn(*cs, dtype=dtype, seed=3)
    return m, leaves, lstm


def _run(m, leaves, call, threads, schedule):
    before = os.environ.get("RNNFAST_ROW_SPLIT")
    torch.set_num_threads(threads)
    if schedule is None:
        os.environ.pop("RNNFAST_ROW_SPLIT", None)
    else:
        os.environ["RNNFAST_ROW_SPLIT"] = schedule
    try:
        torch.manual_seed(5)
        return fwd_bwd(m, leaves, call, upstream_seed=77)
    finally:
        if before is None:
            os.environ.pop("RNNFAST_ROW_SPLIT", None)
        else:
            os.environ["RNNFAST_ROW_SPLIT"] = before


def _assert_same(ref, got, what):
    assert sorted(ref) == sorted(got), what
    for k in ref:
        if isinstance(ref[k], torch.Tensor):
            if not torch.equal(ref[k], got[k]):
                diff = (ref[k].double() - got[k].double()).abs().max().item()
                raise AssertionError(f"{what}: {k} differs (max diff {diff:.3g})")
        else:
            assert ref[k] == got[k], f"{what}: {k}"


@pytest.fixture
def threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("name", list(CASES))
def test_row_split_matches_strip_split_and_one_thread(name, packed, threads_restored):
    paths = [(p, torch.float32) for p in SIMD_PATHS] + [(SIMD_PATHS[-1], torch.float64)]
    for path, dtype in paths:
        m, leaves, lstm = _build(name, dtype)
        call = call_packed(lstm, LENGTHS, False, False) if packed else call_dense(lstm)
        with simd_path(path):
            ref = _run(m, leaves, call, 1, None)
            for threads in (2, 3):
                for schedule in ("1", "0", None):
                    got = _run(m, leaves, call, threads, schedule)
                    _assert_same(ref, got, f"{name} {path} {dtype} {threads} threads, "
                                           f"RNNFAST_ROW_SPLIT={schedule}")


@pytest.mark.parametrize("name", ["lstm_ln_proj_zoneout", "gru_ln_zoneout"])
def test_layer_norm_training_splits_two_rows_per_thread(name, threads_restored):
    """Layer-normalised cells in training take the row split from 2 rows per thread (B = 4 on
    2 threads; other cells from 4): the planner picks it there, forward and backward, and the
    results are those of one thread, bit for bit, on every SIMD path."""
    cell = "lstm_ln" if name.startswith("lstm") else "gru_ln"
    for path in SIMD_PATHS:
        with simd_path(path):
            assert "row_split=1" in rnnfast._C.plan(cell, True, T, 4, I, H, 0, 2), path
            assert "row_split=1" in rnnfast._C.plan(cell, False, T, 4, I, H, 0, 2, training=True)
            assert "row_split=0" in rnnfast._C.plan(cell, False, T, 4, I, H, 0, 2), path
            m, leaves, lstm = _build(name, torch.float32, batch=4)
            call = call_dense(lstm)
            _assert_same(_run(m, leaves, call, 1, None), _run(m, leaves, call, 2, None),
                         f"{name} {path} B=4 2 threads")


def test_row_split_changes_nothing_torch_sees(threads_restored):
    """The forced schedule runs and agrees with torch's nn.LSTM (a float64 sanity check that the
    schedule is not merely consistent with itself)."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H, dtype=torch.float64)
    new = rnnfast.LSTM(I, H, dtype=torch.float64)
    new.load_state_dict(ref.state_dict())
    x = randn(T, B, I, seed=1)
    leaves = {"x": x}
    call = call_dense(True)
    want = fwd_bwd(ref, leaves, call, upstream_seed=77)  # _run's upstream gradient
    for schedule in ("1", "0"):
        assert_results_close(_run(new, leaves, call, 2, schedule), want, ATOL[torch.float64],
                             what=f"RNNFAST_ROW_SPLIT={schedule}")


@pytest.mark.parametrize("name", ["lstm_ln_proj_zoneout", "gru_ln_zoneout", "lstm_peephole_coupled_zoneout"])
def test_large_batch_gradient_sums_are_thread_count_invariant(name, threads_restored):
    """Above 128 rows (no row split) the backward keeps its bias, cell-parameter and gain
    gradient sums per row block of the (row block, strip) schedule, whose blocks follow the
    batch alone: still the same bits at 1, 2 and 3 threads."""
    kind, kw = CASES[name]
    torch.manual_seed(0)
    m = getattr(rnnfast, kind)(6, 24, dtype=torch.float32, **kw)
    m.train()
    leaves = {"x": randn(5, 200, 6, dtype=torch.float32, seed=1)}
    call = call_dense(kind == "LSTM")
    ref = _run(m, leaves, call, 1, None)
    for threads in (2, 3):
        _assert_same(ref, _run(m, leaves, call, threads, None), f"{name} B=200 {threads} threads")


def test_large_batch_gradients_match_torch(threads_restored):
    """The per-block gradient sums above 128 rows give torch's gradients (float64)."""
    torch.manual_seed(0)
    ref = torch.nn.GRU(6, 8, dtype=torch.float64)
    new = rnnfast.GRU(6, 8, dtype=torch.float64)
    new.load_state_dict(ref.state_dict())
    leaves = {"x": randn(5, 200, 6, seed=1)}
    call = call_dense(False)
    want = fwd_bwd(ref, leaves, call, upstream_seed=77)
    assert_results_close(_run(new, leaves, call, 2, None), want, ATOL[torch.float64],
                         what="GRU B=200")
