"""Fuzzing rnnfast with malformed inputs (hypothesis), each case in a crash-isolating worker.

Random malformed inputs (wrong ranks, sizes and dtypes, NaN/Inf values, bad packed lengths and
batch_sizes, bad ``lengths`` given to the raw ops, sizes that cannot be allocated) run in a
long-lived worker subprocess (fuzz_worker.py), one case per request, so that a segfault, an
abort or a sanitizer report is a failed test naming the case, not a dead test run. A case that
hangs (worker silent for ``CASE_TIMEOUT`` seconds) fails the same way. The expected outcome is
a clean Python exception, or torch's numbers (NaN/Inf in the same places) when torch accepts
the input. Budget knobs as in test_fuzz_parity.py.
"""
from __future__ import annotations

import json
import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fuzz_worker import TORCH_DTYPES, Worker
from rnnfast import _cells
from rnn_testutils import (CELLS, KIND_NAMES, STATE_ARGS, WEIGHT_ARGS, fuzz_seed,
                           fuzz_settings)

@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


def _fail(case, res, why):
    pytest.fail(f"{why}\ncase: {json.dumps(case)}\nresult: {json.dumps(res)[:3000]}")


def _valid_batch_sizes(bs, data_shape):
    return (len(bs) > 0 and all(v > 0 for v in bs) and
            all(a >= b for a, b in zip(bs, bs[1:])) and
            len(data_shape) >= 1 and sum(bs) == data_shape[0])


def check_outcome(case, res):
    """The policy: crash/hang never; torch rejects -> rnnfast rejects cleanly; torch accepts ->
    rnnfast gives torch's numbers (NaN/Inf at the same places) or, for dtypes rnnfast does not
    implement, a clean exception that names the dtype."""
    status = res.get("status")
    if status in ("crashed", "hang"):
        if res.get("phase") == "torch":
            pytest.skip(f"torch itself {status} on this input (rnnfast already returned)")
        _fail(case, res, f"process {status} in phase {res.get('phase')!r} "
                         f"(rc={res.get('returncode')})")
    if status != "done":
        _fail(case, res, "fuzz harness error")
    new = res["rnnfast"]
    if not new["ok"]:
        assert new["type"] not in ("SystemError", "AssertionError"), (case, res)
        assert len(new["msg"].strip()) > 10, f"unclear error message: {new}"
    if case["type"] == "module":
        ref = res["torch"]
        bs = case.get("batch_sizes")
        if bs is not None and not _valid_batch_sizes(bs, case["x"]["shape"]):
            # torch.nn does not validate hand-made PackedSequences; any clean outcome will do
            # (a crash or an out-of-bounds read is what this case is for)
            return
        if not ref["ok"]:
            if new["ok"]:
                _fail(case, res, "rnnfast accepted an input that torch rejects")
            return
        if not new["ok"]:
            given = [case["x"]] + [case[k] for k in ("h", "c") if case.get(k)]
            mixed = any(t["dtype"] != case["wdtype"] for t in given)
            if mixed and "dtype" in new["msg"].lower():
                # by design: the fused ops run float32/float64 only, on one dtype throughout;
                # torch silently promotes some mixes (e.g. a float32 c_0 with float64 input)
                return
            _fail(case, res, "torch accepted this input but rnnfast raised")
        if res.get("mismatch"):
            _fail(case, res, "results differ from torch")
    elif case["type"] in ("raw", "backward"):
        why = res["invalid_reason"]
        if why is None and not new["ok"]:
            _fail(case, res, "a valid raw-op call raised")
        if why is not None:
            if new["ok"]:
                _fail(case, res, f"an invalid raw-op call ({why}) was accepted")
            assert new["type"] in ("RuntimeError", "ValueError", "TypeError", "IndexError"), res
            assert "rnnfast" in new["msg"] or "expected" in new["msg"].lower() or \
                "argument" in new["msg"].lower(), f"error does not say what is wrong: {new}"
        if res.get("mismatch"):
            _fail(case, res, "raw op differs from the plain-PyTorch reference")


# ---------------------------------------------------------------------- strategies


@st.composite
def malformed_module_cases(draw, malformations=("shapes", "dtypes", "pack"), kinds=KIND_NAMES):
    kind = draw(st.sampled_from(list(kinds)), label="kind")
    H = draw(st.sampled_from([1, 3, 8, 17]), label="H")
    I = draw(st.sampled_from([1, 2, 5]), label="I")
    layers = draw(st.integers(1, 2), label="layers")
    bidir = draw(st.booleans(), label="bidir")
    bf = draw(st.booleans(), label="batch_first")
    proj = 0
    if kind == "LSTM" and H > 1 and draw(st.booleans(), label="use_proj"):
        proj = draw(st.integers(1, H - 1), label="proj")
    wdtype = draw(st.sampled_from(["float64", "float32"]), label="wdtype")
    T = draw(st.integers(1, 4), label="T")
    B = draw(st.integers(1, 4), label="B")
    D = 2 if bidir else 1
    S = proj or H
    good_x = [B, T, I] if bf else [T, B, I]
    good_h = [layers * D, B, S]
    good_c = [layers * D, B, H]
    dims = st.integers(0, 6)

    def shape(good, label):
        mode = draw(st.sampled_from(["good", "good", "rank", "one_dim", "random"]), label=label)
        if mode == "good":
            return list(good)
        if mode == "rank":
            return draw(st.lists(dims, min_size=0, max_size=5), label=label + "_shape")
        if mode == "one_dim":
            s = list(good)
            i = draw(st.integers(0, len(s) - 1), label=label + "_dim")
            s[i] = draw(dims.filter(lambda v, o=s[i]: v != o), label=label + "_size")
            return s
        return [draw(dims, label=label + f"_{i}") for i in range(len(good))]

    def dtype(label, usual):
        return draw(st.sampled_from([usual] * 5 + TORCH_DTYPES), label=label)

    malformed = draw(st.sampled_from(list(malformations)), label="malformation")
    case = dict(type="module", kind=kind, H=H, I=I, layers=layers, bidir=bidir, batch_first=bf,
                bias=draw(st.booleans(), label="bias"), proj=proj, wdtype=wdtype,
                train=draw(st.booleans(), label="train"),
                backward=draw(st.booleans(), label="backward"),
                seed=draw(st.integers(0, 999), label="seed"))
    with_hx = draw(st.booleans(), label="with_hx")
    case["x"] = {"shape": good_x, "dtype": wdtype}
    case["h"] = {"shape": good_h, "dtype": wdtype} if with_hx else None
    case["c"] = {"shape": good_c, "dtype": wdtype} if with_hx and kind == "LSTM" else None
    if with_hx and kind == "LSTM":
        case["hx_form"] = draw(st.sampled_from(["tuple", "list", "tuple1"]), label="hx_form")
    if malformed == "shapes":
        if draw(st.booleans(), label="unbatched"):
            case["x"]["shape"] = [T, I]
            if with_hx:
                case["h"]["shape"] = [layers * D, S]
                if case["c"]:
                    case["c"]["shape"] = [layers * D, H]
        case["x"]["shape"] = shape(case["x"]["shape"], "x")
        if with_hx:
            case["h"]["shape"] = shape(case["h"]["shape"], "h")
            if case["c"]:
                case["c"]["shape"] = shape(case["c"]["shape"], "c")
    elif malformed == "dtypes":
        xd = dtype("x_dtype", wdtype)
        case["x"]["dtype"] = xd
        if with_hx:
            case["h"]["dtype"] = dtype("h_dtype", xd)
            if case["c"]:
                case["c"]["dtype"] = dtype("c_dtype", xd)
    elif malformed == "nonfinite":
        targets = ["x"] + (["h"] if with_hx else []) + (["c"] if case["c"] else [])
        params = ["weight_ih_l0", "weight_hh_l0"] + (["bias_hh_l0"] if case["bias"] else [])
        tgt = draw(st.sampled_from(targets + ["weight:" + p for p in params]), label="target")
        case["nonfinite"] = {"target": tgt,
                             "value": draw(st.sampled_from(["nan", "inf", "-inf"]), label="value"),
                             "count": draw(st.integers(1, 3), label="count")}
    elif malformed == "pack":
        lengths = draw(st.lists(st.integers(-2, T + 2), min_size=1, max_size=B + 1),
                       label="lengths")
        case["pack"] = {"lengths": lengths, "enforce_sorted": draw(st.booleans(), label="sorted")}
    else:  # a hand-made PackedSequence with arbitrary batch_sizes
        bs = draw(st.lists(st.integers(-1, B + 1), min_size=0, max_size=T + 1),
                  label="batch_sizes")
        rows = draw(st.sampled_from([sum(max(v, 0) for v in bs), max(0, sum(bs) - 1),
                                     sum(max(v, 0) for v in bs) + 1]), label="rows")
        case["x"]["shape"] = [rows, I]
        case["batch_sizes"] = bs
        if with_hx:
            b0 = bs[0] if bs else 0
            case["h"]["shape"] = [layers * D, max(b0, 0), S]
            if case["c"]:
                case["c"]["shape"] = [layers * D, max(b0, 0), H]
    return case


REQUIRED = ("input", "weight_ih", "weight_hh", "workspace")
RAW_ARGS = ["input", *STATE_ARGS, *WEIGHT_ARGS, "lengths"]
BACKWARD_ARGS = ["grad_output", "grad_hy", "grad_cy", "input", *WEIGHT_ARGS, "lengths",
                 "workspace"]


@st.composite
def raw_cases(draw, backward_op=False):
    cell = draw(st.sampled_from(CELLS), label="cell")
    H = draw(st.sampled_from([1, 2, 7, 8, 9, 16, 17, 33]), label="H")
    P = draw(st.integers(1, H - 1), label="P") if _cells.cell(cell).projection and H > 1 and \
        draw(st.booleans(), label="use_P") else 0
    T = draw(st.integers(1, 5), label="T")
    B = draw(st.sampled_from([0, 1, 2, 3, 7]), label="B")
    case = dict(type="backward" if backward_op else "raw", cell=cell, H=H, P=P, T=T, B=B,
                I=draw(st.sampled_from([1, 3, 8, 17]), label="I"),
                dtype=draw(st.sampled_from(["float32", "float64"]), label="dtype"),
                has_state=draw(st.booleans(), label="has_state"),
                has_bias=draw(st.booleans(), label="has_bias"),
                reverse=draw(st.booleans(), label="reverse"),
                training=draw(st.booleans(), label="training") if not backward_op else
                draw(st.sampled_from([True, True, True, False]), label="training"),
                backward=draw(st.booleans(), label="backward"),
                seed=draw(st.integers(0, 999), label="seed"))
    case["lengths"] = (draw(st.lists(st.integers(0, T), min_size=B, max_size=B), label="lengths")
                       if draw(st.booleans(), label="has_lengths") else None)
    args = BACKWARD_ARGS if backward_op else RAW_ARGS
    corrs = []
    for i in range(draw(st.integers(0, 2), label="n_corruptions")):
        what = draw(st.sampled_from(["drop", "noncontig", "rank_up", "rank_down", "resize",
                                     "dtype", "nonfinite", "lengths", "add_cx", "add_w_hr"]),
                    label=f"what{i}")
        c = {"what": what, "arg": draw(st.sampled_from(args), label=f"arg{i}")}
        if what == "drop" and c["arg"] in REQUIRED:
            c["what"] = "noncontig"  # None for a required tensor: see test_required_arg_none
        if what == "resize":
            c["dim"] = draw(st.integers(0, 2), label=f"dim{i}")
            c["delta"] = draw(st.sampled_from([-1, 1, 2]), label=f"delta{i}")
        elif what == "dtype":
            c["dtype"] = draw(st.sampled_from(["float32", "float64", "float16", "int64", "int32",
                                               "bool"]), label=f"dtype{i}")
        elif what == "nonfinite":
            c["value"] = draw(st.sampled_from(["nan", "inf", "-inf"]), label=f"value{i}")
            c["count"] = draw(st.integers(1, 2), label=f"count{i}")
        elif what == "lengths":
            c["value"] = draw(st.one_of(
                st.lists(st.integers(-3, T + 3), min_size=B, max_size=B),       # range errors
                st.lists(st.integers(0, T), min_size=0, max_size=B + 2),        # wrong size
                st.builds(lambda d, dt: {"data": d, "dtype": dt},               # wrong dtype/rank
                          st.one_of(st.lists(st.integers(0, T), min_size=B, max_size=B),
                                    st.lists(st.lists(st.integers(0, T), min_size=B, max_size=B),
                                             min_size=1, max_size=2)),
                          st.sampled_from(["int64", "int32", "float32", "bool"]))),
                label=f"lengths{i}")
        elif what == "add_w_hr":
            c["rows"] = draw(st.integers(0, H + 1), label=f"rows{i}")
        corrs.append(c)
    case["corruptions"] = corrs
    return case


# ---------------------------------------------------------------------- tests


@fuzz_settings(160)
@fuzz_seed
@given(case=malformed_module_cases())
def test_fuzz_malformed_module_inputs(worker, case):
    check_outcome(case, worker.run(case))


# A hand-made PackedSequence with bad batch_sizes: torch's pad_packed_sequence (which the
# modules call) would write out of bounds, so the modules validate batch_sizes first.


@fuzz_settings(60, shrink=False)
@fuzz_seed
@given(case=malformed_module_cases(malformations=("batch_sizes",)))
def test_fuzz_malformed_packed_batch_sizes(worker, case):
    """Hand-made PackedSequences with arbitrary batch_sizes and data rows."""
    check_outcome(case, worker.run(case))


_BS_CASES = {  # batch_sizes -> data rows
    "valid": ([3, 2, 2, 1], 8), "rows_short": ([2, 1], 2), "rows_long": ([2, 1], 4),
    "zero_tail": ([2, 0], 2), "zero_only": ([0], 0), "negative": ([-1, 2], 1),
    "increasing": ([1, 2], 3), "leading_zero": ([0, 1], 1), "empty": ([], 1),
}


@pytest.mark.parametrize("name", _BS_CASES)
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_packed_batch_sizes_never_crash(worker, kind, name):
    bs, rows = _BS_CASES[name]
    case = dict(type="module", kind=kind, H=3, I=2, layers=1, bidir=False, batch_first=False,
                bias=True, proj=0, wdtype="float64", train=True, backward=True, seed=0,
                x={"shape": [rows, 2], "dtype": "float64"}, h=None, c=None, batch_sizes=bs)
    check_outcome(case, worker.run(case))


@fuzz_settings(120)
@fuzz_seed
@given(case=malformed_module_cases(malformations=("nonfinite",),
                                   kinds=("LSTM", "GRU", "RNN_TANH")))
def test_fuzz_nonfinite_values_like_torch(worker, case):
    """NaN / +Inf / -Inf in the input, h_0, c_0 or a weight: outputs and gradients have NaN and
    Inf exactly where torch has them, and the finite entries agree.  (RNN relu: see
    test_relu_gradient_at_nan_like_torch.)"""
    check_outcome(case, worker.run(case))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_relu_gradient_at_nan_like_torch(worker, dtype):
    case = dict(type="module", kind="RNN_RELU", H=17, I=3, layers=2, bidir=True,
                batch_first=False, bias=True, proj=0, wdtype=dtype, train=True, backward=True,
                seed=3, x={"shape": [4, 2, 3], "dtype": dtype}, h=None, c=None,
                nonfinite={"target": "x", "value": "nan", "count": 1})
    check_outcome(case, worker.run(case))


@fuzz_settings(200)
@fuzz_seed
@given(case=raw_cases())
def test_fuzz_malformed_raw_op_args(worker, case):
    check_outcome(case, worker.run(case))


@fuzz_settings(80)
@fuzz_seed
@given(case=raw_cases(backward_op=True))
def test_fuzz_malformed_backward_op_args(worker, case):
    check_outcome(case, worker.run(case))


HUGE = (["module_hidden_2e40", "module_input_2e40", "cell_hidden_2e40", "module_T_2e44"] +
        [f"{n}:{c}" for n in ("op_T_2e44", "op_B_2e44", "op_TB_2e31", "op_I_2e44", "op_H_2e30")
         for c in ("lstm", "gru")])


@pytest.mark.parametrize("name", HUGE)
def test_huge_sizes_raise_cleanly(worker, name):
    """Sizes that cannot be allocated (>= 2^46 bytes: more than any address space) give a
    Python exception (RuntimeError / MemoryError / ValueError), never a crash or a hang."""
    base, _, cell = name.partition(":")
    case = {"type": "huge", "name": base, "cell": cell or "lstm"}
    res = worker.run(case)
    if res.get("status") != "done":
        _fail(case, res, f"process {res.get('status')}")
    new = res["rnnfast"]
    assert not new["ok"], f"{name}: expected an allocation/size error, got success"
    assert new["type"] in ("RuntimeError", "MemoryError", "ValueError", "OverflowError"), new
    assert len(new["msg"]) > 10, new


def test_worker_turns_crashes_and_hangs_into_results():
    """The harness itself: a segfault or a hang inside a case comes back as a named result
    (with the phase it happened in and the worker's stderr), and the next case gets a fresh
    worker."""
    # under scripts/sanitize.sh, keep ASan from turning the deliberate SIGSEGV into a report
    asan = os.environ.get("ASAN_OPTIONS")
    w = Worker(case_timeout=20, env={"ASAN_OPTIONS": asan + ":handle_segv=0"} if asan else {})
    try:
        res = w.run({"type": "selftest", "name": "segfault"})
        assert res["status"] == "crashed" and res["phase"] == "rnnfast", res
        assert res["returncode"] == -11 and "Segmentation fault" in res["stderr"], res
        res = w.run({"type": "selftest", "name": "harness_bug"})
        assert res["status"] == "harness-error" and "deliberate" in res["error"], res
        w.case_timeout = 2
        res = w.run({"type": "selftest", "name": "hang"})
        assert res["status"] == "hang", res
        w.case_timeout = 20
        res = w.run({"type": "selftest", "name": "ok"})
        assert res["status"] == "done" and res["rnnfast"]["ok"], res
    finally:
        w.close()


@pytest.mark.parametrize("op,arg", [("forward", "input"), ("forward", "weights"),
                                    ("backward", "workspace"), ("backward", "weights")])
def test_required_arg_none_is_a_clear_error(op, arg):
    """None passed for a required tensor of a raw op (or inside its weights list): an error
    that names the argument."""
    x, w_ih, w_hh = torch.randn(2, 3, 4), torch.randn(12, 4), torch.randn(12, 4)
    y, _, ws = torch.ops.rnnfast.layer("gru", x, [], [w_ih, w_hh], None, False, True)
    a = dict(input=x, weights=[w_ih, w_hh], workspace=ws)
    a[arg] = [w_ih, None] if arg == "weights" else None
    if op == "forward":
        def call():
            return torch.ops.rnnfast.layer("gru", a["input"], [], a["weights"], None, False, True)
    else:
        def call():
            return torch.ops.rnnfast.layer_backward("gru", torch.ones_like(y), [], x,
                                                    a["weights"], None, a["workspace"], False)
    with pytest.raises((RuntimeError, TypeError)) as info:
        call()
    msg = str(info.value)
    assert arg in msg and any(w in msg.lower() for w in ("none", "required", "undefined",
                                                         "defined", "missing")), msg

