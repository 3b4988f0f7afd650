"""Property-based fuzzing of rnnfast against torch (hypothesis).

Two halves:

* ``test_fuzz_*_parity``: random valid configurations (cell kind, sizes that include 1 and odd
  sizes straddling the SIMD strip widths 8/16/32, layers, directions, batch_first, packed
  lengths, dtypes, with/without hx and bias, LSTM proj_size) -- outputs and every gradient must
  match torch.nn (float64 atol 1e-9, float32 atol 3e-5, rtol 0).

* ``test_fuzz_malformed_*`` / ``test_huge_*``: random malformed inputs (wrong ranks, sizes and
  dtypes, NaN/Inf values, bad packed lengths and batch_sizes, bad ``lengths`` given to the raw
  ops, sizes that cannot be allocated).  These run in a long-lived *worker subprocess*, one case
  per request, so that a segfault, an abort or a sanitizer report is a failed test naming the
  case, not a dead test run.  A case that hangs (worker silent for ``CASE_TIMEOUT`` seconds)
  fails the same way.  The expected outcome is a clean Python exception, or torch's numbers
  (NaN/Inf in the same places) when torch accepts the input.

Budget and reproducibility: every ``@given`` test is derandomized (a fixed sequence of
examples, the same on every run) with ``max_examples`` sized for about a minute in total on a
2-core CI machine.  Environment knobs:

  RNNFAST_FUZZ_SEED=<int>    run a different, seeded (still reproducible) sequence instead
  RNNFAST_FUZZ_SCALE=<float> multiply every max_examples (e.g. 10 for a nightly soak)
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # the worker runs this file as a script
    sys.path.insert(0, HERE)

import rnnfast  # noqa: E402
from rnnfast import _cells  # noqa: E402
from rnn_testutils import (ATOL, CELL_KIND_NAMES, KIND_NAMES, call_dense, call_packed,  # noqa: E402
                           compare_modules, hx_shapes, is_lstm, make_pair, randn,
                           upstream_like)

# --------------------------------------------------------------------------------------------
# Budget / reproducibility
# --------------------------------------------------------------------------------------------

FUZZ_SEED = os.environ.get("RNNFAST_FUZZ_SEED")
FUZZ_SCALE = float(os.environ.get("RNNFAST_FUZZ_SCALE", "1"))
# Seconds one malformed case may take in the worker before it counts as a hang (sanitized
# builds are ~3-10x slower; the worker's first case also pays for importing torch).
CASE_TIMEOUT = float(os.environ.get("RNNFAST_FUZZ_CASE_TIMEOUT", "60"))


def fuzz_settings(n: int, shrink: bool = True):
    kw = dict(max_examples=max(1, int(round(n * FUZZ_SCALE))), deadline=None, database=None,
              print_blob=True, suppress_health_check=list(HealthCheck))
    if not shrink:  # each crash costs a worker restart (~2 s): report the first one as found
        kw["phases"] = (Phase.explicit, Phase.reuse, Phase.generate)
    if FUZZ_SEED is None:
        kw["derandomize"] = True
    return settings(**kw)


def fuzz_seed(fn):
    return seed(int(FUZZ_SEED))(fn) if FUZZ_SEED is not None else fn


# Sizes straddling the SIMD strip widths (NR = 8 scalar / 8-16 AVX2 / 16-32 AVX-512) and the
# vector widths (4 / 8 / 16), plus 1.
SIZES = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33]
BATCHES = [1, 2, 3, 5, 6, 7, 13]   # register tile MR = 6 rows
DT = {"float32": torch.float32, "float64": torch.float64}
_CLS = {"LSTM": ("LSTM", {}), "GRU": ("GRU", {}), "RNN_TANH": ("RNN", {"nonlinearity": "tanh"}),
        "RNN_RELU": ("RNN", {"nonlinearity": "relu"})}
# The raw ops' cells, and the names the fuzz gives the tensors of their lists: the state list
# holds hx (and cx for a cell with a cell state), the weights list the present parameters in
# the C++ core's order.
CELLS = rnnfast.ops.CELLS
STATE_ARGS = ("hx", "cx")
WEIGHT_ARGS = tuple(p.name for p in _cells.PARAMS)


def _state_list(a):
    return [a[n] for n in STATE_ARGS if a.get(n) is not None]


def _weight_list(a):
    return [a[n] for n in WEIGHT_ARGS if a.get(n) is not None]


# ============================================================================================
# Part 1: random valid configurations match torch
# ============================================================================================


@st.composite
def module_configs(draw):
    kind = draw(st.sampled_from(KIND_NAMES), label="kind")
    dtype = draw(st.sampled_from(["float64", "float32"]), label="dtype")
    hidden = draw(st.sampled_from(SIZES), label="H")
    inp = draw(st.sampled_from(SIZES), label="I")
    proj = 0
    if kind == "LSTM" and hidden > 1 and draw(st.booleans(), label="use_proj"):
        proj = draw(st.integers(1, hidden - 1), label="proj_size")
    cfg = dict(
        kind=kind, dtype=dtype, H=hidden, I=inp, proj=proj,
        layers=draw(st.integers(1, 3), label="num_layers"),
        bidir=draw(st.booleans(), label="bidirectional"),
        batch_first=draw(st.booleans(), label="batch_first"),
        bias=draw(st.booleans(), label="bias"),
        hx=draw(st.booleans(), label="hx"),
        form=draw(st.sampled_from(["batched", "unbatched", "packed"]), label="form"),
        T=draw(st.integers(1, 7), label="T"),
        B=draw(st.sampled_from(BATCHES), label="B"),
        train=draw(st.booleans(), label="train_mode"),
        seed=draw(st.integers(0, 2 ** 16), label="seed"),
    )
    if cfg["form"] == "packed":
        lengths = draw(st.lists(st.integers(1, cfg["T"]), min_size=cfg["B"], max_size=cfg["B"]),
                       label="lengths")
        cfg["enforce_sorted"] = draw(st.booleans(), label="enforce_sorted")
        if cfg["enforce_sorted"]:
            lengths = sorted(lengths, reverse=True)
        cfg["lengths"] = lengths
    return cfg


def run_module_config(cfg):
    kind, dtype = cfg["kind"], DT[cfg["dtype"]]
    kw = dict(num_layers=cfg["layers"], bidirectional=cfg["bidir"],
              batch_first=cfg["batch_first"], bias=cfg["bias"])
    if cfg["proj"]:
        kw["proj_size"] = cfg["proj"]
    ref, new = make_pair(kind, cfg["I"], cfg["H"], seed=cfg["seed"], dtype=dtype, **kw)
    ref.train(cfg["train"])
    new.train(cfg["train"])
    T, B, I, s = cfg["T"], cfg["B"], cfg["I"], cfg["seed"]
    unbatched = cfg["form"] == "unbatched"
    if unbatched:
        x = randn(T, I, dtype=dtype, seed=s + 1)
    elif cfg["batch_first"]:
        x = randn(B, T, I, dtype=dtype, seed=s + 1)
    else:
        x = randn(T, B, I, dtype=dtype, seed=s + 1)
    leaves = {"x": x}
    if cfg["hx"]:
        hs, cs = hx_shapes(kind, cfg["layers"], cfg["bidir"], None if unbatched else B, cfg["H"],
                           cfg["proj"])
        leaves["h0"] = randn(*hs, dtype=dtype, seed=s + 2)
        if cs is not None:
            leaves["c0"] = randn(*cs, dtype=dtype, seed=s + 3)
    if cfg["form"] == "packed":
        call = call_packed(is_lstm(kind), cfg["lengths"], cfg["enforce_sorted"],
                           cfg["batch_first"])
    else:
        call = call_dense(is_lstm(kind))
    compare_modules(kind, ref, new, leaves, call, dtype, what=json.dumps(cfg),
                    upstream_seed=s + 7)


@fuzz_settings(140)
@fuzz_seed
@given(cfg=module_configs())
def test_fuzz_module_parity(cfg):
    run_module_config(cfg)


@st.composite
def cell_configs(draw):
    return dict(
        kind=draw(st.sampled_from(CELL_KIND_NAMES), label="kind"),
        dtype=draw(st.sampled_from(["float64", "float32"]), label="dtype"),
        H=draw(st.sampled_from(SIZES), label="H"),
        I=draw(st.sampled_from(SIZES), label="I"),
        B=draw(st.sampled_from([None] + BATCHES), label="B"),
        bias=draw(st.booleans(), label="bias"),
        hx=draw(st.booleans(), label="hx"),
        seed=draw(st.integers(0, 2 ** 16), label="seed"),
    )


def _cell_call(lstm):
    def call(m, x, h0=None, c0=None):
        res = m(x) if h0 is None else m(x, (h0, c0) if lstm else h0)
        return {"h": res[0], "c": res[1]} if lstm else {"h": res}
    return call


@fuzz_settings(60)
@fuzz_seed
@given(cfg=cell_configs())
def test_fuzz_cell_parity(cfg):
    kind, dtype, s = cfg["kind"], DT[cfg["dtype"]], cfg["seed"]
    ref, new = make_pair(kind, cfg["I"], cfg["H"], seed=s, bias=cfg["bias"], dtype=dtype)
    lead = () if cfg["B"] is None else (cfg["B"],)
    leaves = {"x": randn(*lead, cfg["I"], dtype=dtype, seed=s + 1)}
    if cfg["hx"]:
        leaves["h0"] = randn(*lead, cfg["H"], dtype=dtype, seed=s + 2)
        if is_lstm(kind):
            leaves["c0"] = randn(*lead, cfg["H"], dtype=dtype, seed=s + 3)
    compare_modules(kind, ref, new, leaves, _cell_call(is_lstm(kind)), dtype,
                    what=json.dumps(cfg), upstream_seed=s + 7)


# ============================================================================================
# Part 2: malformed inputs, run in a crash-isolating worker subprocess
# ============================================================================================
#
# A case is a JSON dict.  The worker builds the tensors from it (seeded), runs rnnfast first and
# torch second (or the plain-PyTorch reference for raw-op cases), and replies with a verdict.
# The parent applies the policy (what counts as a clean outcome) and fails on crashes/hangs.

_TORCH_DTYPES = ["float32", "float64", "float16", "bfloat16", "int64", "int32", "bool",
                 "complex64"]


def _make(shape, dtype_name, seed_):
    dt = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(seed_)
    if dt.is_floating_point:
        return torch.randn(shape, generator=g, dtype=torch.float64).to(dt)
    if dt.is_complex:
        return torch.randn(shape, generator=g, dtype=dt)
    if dt == torch.bool:
        return torch.randn(shape, generator=g) > 0
    return torch.randint(-3, 4, shape, generator=g, dtype=dt)


def _inject(t, spec, seed_):
    """Writes NaN/+Inf/-Inf into `t` (in place) at spec['count'] seeded positions."""
    if spec is None or t is None or t.numel() == 0 or not t.is_floating_point():
        return t
    val = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}[spec["value"]]
    g = torch.Generator().manual_seed(seed_ + 99)
    idx = torch.randint(0, t.numel(), (spec["count"],), generator=g)
    flat = t.view(-1) if t.is_contiguous() else None
    if flat is None:
        t = t.contiguous()
        flat = t.view(-1)
    flat[idx] = val
    return t


def _same_nonfinite(a, e, atol, key):
    """Same shape/dtype, NaN and +-Inf at the same places, finite values close."""
    if a.shape != e.shape or a.dtype != e.dtype:
        return f"{key}: shape/dtype {tuple(a.shape)} {a.dtype} vs torch {tuple(e.shape)} {e.dtype}"
    if not e.is_floating_point():
        return None if torch.equal(a, e) else f"{key}: values differ"
    a64, e64 = a.double(), e.double()
    for name, fn in (("NaN", torch.isnan), ("+Inf", lambda t: t == float("inf")),
                     ("-Inf", lambda t: t == float("-inf"))):
        ma, me = fn(a64), fn(e64)
        if not torch.equal(ma, me):
            return (f"{key}: {name} pattern differs: rnnfast {int(ma.sum())} vs torch "
                    f"{int(me.sum())} entries, first mismatch at "
                    f"{(ma != me).nonzero()[0].tolist()}")
    fin = torch.isfinite(e64)
    if fin.any():
        err = (a64[fin] - e64[fin]).abs().max().item()
        if err > atol:
            return f"{key}: max abs error {err:.3e} > {atol:.1e} on finite entries"
    return None


# ---------------------------------------------------------------------- worker-side runners


def _collect(model, inp, hx, backward, upstream_seed):
    """Forward (+ backward of a random upstream gradient); everything as a flat dict."""
    out, hn = model(inp) if hx is None else model(inp, hx)
    res = {"out": out.data if isinstance(out, PackedSequence) else out}
    if isinstance(hn, tuple):
        res["h_n"], res["c_n"] = hn
    else:
        res["h_n"] = hn
    outs = {k: v.detach() for k, v in res.items()}
    if backward:
        loss = None
        for i, (k, v) in enumerate(sorted(res.items())):
            if v.requires_grad:
                term = (v * upstream_like(v, upstream_seed + i)).sum()
                loss = term if loss is None else loss + term
        leaves = [t for t in _leaf_list(inp, hx) if t.requires_grad]
        params = [(n, p) for n, p in model.named_parameters()]
        if loss is not None:
            grads = torch.autograd.grad(loss, leaves + [p for _, p in params], allow_unused=True,
                                        materialize_grads=True)
            names = [f"grad:leaf{i}" for i in range(len(leaves))] + [f"grad:{n}" for n, _ in params]
            outs.update({n: g.detach() for n, g in zip(names, grads)})
    return outs


def _leaf_list(inp, hx):
    out = []
    if isinstance(inp, torch.Tensor):
        out.append(inp)
    elif isinstance(inp, PackedSequence):
        out.append(inp.data)
    if isinstance(hx, torch.Tensor):
        out.append(hx)
    elif isinstance(hx, (tuple, list)):
        out.extend(t for t in hx if isinstance(t, torch.Tensor))
    return out


def _run_module_case(case, phase):
    import rnnfast

    cls, extra = _CLS[case["kind"]]
    kw = dict(num_layers=case["layers"], bidirectional=case["bidir"],
              batch_first=case["batch_first"], bias=case["bias"], dtype=DT[case["wdtype"]], **extra)
    if case.get("proj"):
        kw["proj_size"] = case["proj"]
    torch.manual_seed(case["seed"])
    ref = getattr(nn, cls)(case["I"], case["H"], **kw)
    nf = case.get("nonfinite")
    if nf and nf["target"].startswith("weight:"):
        with torch.no_grad():
            _inject(getattr(ref, nf["target"][7:]), nf, case["seed"])
    new = getattr(rnnfast, cls)(case["I"], case["H"], **kw)
    new.load_state_dict(ref.state_dict())
    for m in (ref, new):
        m.train(case["train"])

    def build():
        x = _make(case["x"]["shape"], case["x"]["dtype"], case["seed"] + 1)
        if nf and nf["target"] == "x":
            x = _inject(x, nf, case["seed"])
        h = c = None
        if case.get("h") is not None:
            h = _make(case["h"]["shape"], case["h"]["dtype"], case["seed"] + 2)
            if nf and nf["target"] == "h":
                h = _inject(h, nf, case["seed"])
        if case.get("c") is not None:
            c = _make(case["c"]["shape"], case["c"]["dtype"], case["seed"] + 3)
            if nf and nf["target"] == "c":
                c = _inject(c, nf, case["seed"])
        grad = case["backward"]
        for t in (x, h, c):
            if grad and t is not None and (t.is_floating_point() or t.is_complex()):
                t.requires_grad_(True)
        form = case.get("hx_form", "tuple")
        if h is None:
            hx = None
        elif c is None:
            hx = h if form != "tuple1" else (h,)
        else:
            hx = (h, c) if form == "tuple" else [h, c]
        inp = x
        if case.get("pack") is not None:
            p = case["pack"]
            inp = pack_padded_sequence(x, torch.tensor(p["lengths"]),
                                       batch_first=case["batch_first"],
                                       enforce_sorted=p["enforce_sorted"])
        elif case.get("batch_sizes") is not None:
            inp = PackedSequence(x, torch.tensor(case["batch_sizes"], dtype=torch.int64))
        return inp, hx

    def attempt(model):
        try:
            inp, hx = build()
            return {"ok": True}, _collect(model, inp, hx, case["backward"], case["seed"] + 5)
        except Exception as exc:  # noqa: BLE001 - any clean Python exception is an outcome
            return {"ok": False, "type": type(exc).__name__, "msg": str(exc)[:400]}, None

    phase("rnnfast")
    r_new, v_new = attempt(new)
    phase("torch")
    r_ref, v_ref = attempt(ref)
    res = {"rnnfast": r_new, "torch": r_ref}
    if v_new is not None and v_ref is not None:
        atol = ATOL.get(DT.get(case["x"]["dtype"]), 3e-5)
        problems = []
        if sorted(v_new) != sorted(v_ref):
            problems.append(f"result keys differ: {sorted(v_new)} vs torch {sorted(v_ref)}")
        else:
            for k in sorted(v_ref):
                msg = _same_nonfinite(v_new[k], v_ref[k], atol, k)
                if msg:
                    problems.append(msg)
        res["mismatch"] = problems
    return res


def _raw_args(case):
    """Valid raw-op arguments from the base config, then the corruptions applied."""
    cell, dt = case["cell"], DT[case["dtype"]]
    info = _cells.cell(cell)
    T, B, I, H, P = case["T"], case["B"], case["I"], case["H"], case["P"]
    G, S, s = info.gates, (case["P"] or case["H"]), case["seed"]
    a = {
        "input": _make((T, B, I), case["dtype"], s + 1),
        "hx": _make((B, S), case["dtype"], s + 2) if case["has_state"] else None,
        "cx": _make((B, H), case["dtype"], s + 3) if case["has_state"] and info.cell_state
        else None,
        "weight_ih": _make((G * H, I), case["dtype"], s + 4) * 0.5,
        "weight_hh": _make((G * H, S), case["dtype"], s + 5) * 0.5,
        "bias_ih": _make((G * H,), case["dtype"], s + 6) if case["has_bias"] else None,
        "bias_hh": _make((G * H,), case["dtype"], s + 7) if case["has_bias"] else None,
        "weight_hr": _make((P, H), case["dtype"], s + 8) * 0.5 if P else None,
        "lengths": None,
    }
    if case["lengths"] is not None:
        a["lengths"] = torch.tensor(case["lengths"], dtype=torch.int64)
    for corr in case["corruptions"]:
        _corrupt(a, corr, case, dt)
    return a


def _noncontig(t):
    if t.dim() == 0 or t.numel() == 0:
        return t
    if t.dim() == 1:
        return torch.stack([t, torch.zeros_like(t)], 1)[:, 0]
    return t.transpose(0, 1).contiguous().transpose(0, 1)


def _corrupt(a, corr, case, dt):
    what, name = corr["what"], corr.get("arg")
    t = a.get(name)
    if what == "drop":
        a[name] = None
    elif what == "noncontig" and t is not None:
        a[name] = _noncontig(t)
    elif what == "rank_up" and t is not None:
        a[name] = t.unsqueeze(0)
    elif what == "rank_down" and t is not None and t.numel() > 0:
        a[name] = t.reshape(-1)[:1].reshape(()) if t.dim() == 1 else t.reshape(t.shape[0], -1)[:, 0]
    elif what == "resize" and t is not None and t.dim() > 0:
        dim = corr["dim"] % t.dim()
        shape = list(t.shape)
        shape[dim] = max(0, shape[dim] + corr["delta"])
        new = torch.zeros(shape, dtype=t.dtype)
        sl = tuple(slice(0, min(o, n)) for o, n in zip(t.shape, shape))
        new[sl] = t[sl]
        a[name] = new
    elif what == "dtype" and t is not None:
        a[name] = t.to(getattr(torch, corr["dtype"]))
    elif what == "nonfinite" and t is not None:
        a[name] = _inject(t.clone(), corr, case["seed"] + len(name))
    elif what == "add_cx":  # a cx for any cell (only one with a cell state accepts it)
        a["cx"] = _make((case["B"], case["H"]), case["dtype"], 11)
    elif what == "add_w_hr":  # a projection of the given rows (only LSTM, 0 < rows < H)
        a["weight_hr"] = _make((corr["rows"], case["H"]), case["dtype"], 12)
    elif what == "lengths":
        a["lengths"] = corr["value"] if not isinstance(corr["value"], dict) else \
            torch.tensor(corr["value"]["data"], dtype=getattr(torch, corr["value"]["dtype"]))
        if isinstance(a["lengths"], list):
            a["lengths"] = torch.tensor(a["lengths"], dtype=torch.int64)


def _weights_problem(info, a):
    """Why the weights list of `a` does not read as the parameters it holds, or None: the op
    reads the list by its length (csrc/torch/common.h), so a list missing a bias, or holding a
    projection for a cell without one, is read as other parameters or rejected."""
    present = [n for n in WEIGHT_ARGS if a.get(n) is not None]
    try:
        names = _cells.weight_names(info, len(present))
    except RuntimeError:
        return "weights count (or a projection for a cell without one)"
    if list(names) != present:
        return f"weights {present} read as {list(names)}"
    return None


def _expected_valid(cell, a):
    """The ops' documented contract, restated: None if `a` is valid, else the reason."""
    info = _cells.cell(cell)
    x = a["input"]
    for n in ("input", "weight_ih", "weight_hh"):
        if a[n] is None:
            return f"{n} missing"
    if x.dtype not in (torch.float32, torch.float64):
        return "input dtype"
    if x.dim() != 3:
        return "input rank"
    if x.shape[0] == 0:
        return "T == 0"
    T, B, I = x.shape
    G = info.gates
    why = _weights_problem(info, a)
    if why:
        return why
    for n in WEIGHT_ARGS + STATE_ARGS:
        if a[n] is not None and a[n].dtype != x.dtype:
            return f"{n} dtype"
    w_ih, w_hh, w_hr = a["weight_ih"], a["weight_hh"], a["weight_hr"]
    if w_ih.dim() != 2 or w_hh.dim() != 2:
        return "weight rank"
    if w_ih.shape[0] % G or w_ih.shape[1] != I:
        return "weight_ih shape"
    H = w_ih.shape[0] // G
    P = 0
    if w_hr is not None:
        if w_hr.dim() != 2 or not (0 < w_hr.shape[0] < H) or w_hr.shape[1] != H:
            return "weight_hr shape"
        P = w_hr.shape[0]
    S = P or H
    if tuple(w_hh.shape) != (G * H, S):
        return "weight_hh shape"
    states = _state_list(a)
    if len(states) not in (0, info.states):
        return f"{len(states)} states for a cell with {info.states}"
    for k, (t, want) in enumerate(zip(states, _cells.state_shapes(info, B, H, P))):
        if tuple(t.shape) != want:
            return f"state[{k}] shape"
    for n in ("bias_ih", "bias_hh"):
        if a[n] is not None and tuple(a[n].shape) != (G * H,):
            return f"{n} shape"
    L = a["lengths"]
    if L is not None:
        if L.dtype != torch.int64 or L.dim() != 1 or L.shape[0] != B:
            return "lengths dtype/shape"
        if B and (int(L.min()) < 0 or int(L.max()) > T):
            return "lengths range"
    return None


def _outputs(out, final):
    """The op's or the reference's results by name: out, then each final state."""
    return {"out": out, **{_cells.STATE_NAMES[k]: t for k, t in enumerate(final)}}


def _run_raw_case(case, phase):
    import rnnfast  # noqa: F401  (registers the ops)
    from rnnfast import _reference

    cell = case["cell"]
    op = torch.ops.rnnfast.layer
    a = _raw_args(case)
    why_invalid = _expected_valid(cell, a)
    names = ["input", *STATE_ARGS, *WEIGHT_ARGS]
    grad = case["training"] and why_invalid is None and case["backward"]
    leaves = {}
    args = {}
    for n in names:
        t = a[n]
        if grad and t is not None:
            base = t.detach().clone().requires_grad_(True)
            leaves[n] = base
            t = base if t.is_contiguous() else _noncontig(base)
        args[n] = t
    res = {"invalid_reason": why_invalid}
    phase("rnnfast")
    try:
        out, final, _ = op(cell, args["input"], _state_list(args), _weight_list(args),
                           a["lengths"], case["reverse"], case["training"])
        got = _outputs(out, final)
        if grad:
            loss = sum((v * upstream_like(v, case["seed"] + i)).sum()
                       for i, (k, v) in enumerate(sorted(got.items())))
            gs = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True,
                                     materialize_grads=True)
            got.update({f"grad:{n}": g for n, g in zip(leaves, gs)})
        res["rnnfast"] = {"ok": True}
    except Exception as exc:  # noqa: BLE001
        res["rnnfast"] = {"ok": False, "type": type(exc).__name__, "msg": str(exc)[:400]}
        return res
    if why_invalid is not None:
        return res
    phase("reference")
    ref_args = {n: (leaves[n] if n in leaves else a[n]) for n in names}
    if grad:
        ref_args = {n: (v.detach().clone().requires_grad_(True) if v is not None else None)
                    for n, v in ref_args.items()}
    exp = _outputs(*_reference.layer(cell, ref_args["input"], _state_list(ref_args),
                                     _weight_list(ref_args), a["lengths"], case["reverse"]))
    if grad:
        loss = sum((v * upstream_like(v, case["seed"] + i)).sum()
                   for i, (k, v) in enumerate(sorted(exp.items())))
        gs = torch.autograd.grad(loss, [ref_args[n] for n in leaves], allow_unused=True,
                                 materialize_grads=True)
        exp.update({f"grad:{n}": g for n, g in zip(leaves, gs)})
    atol = ATOL[DT[case["dtype"]]]
    res["mismatch"] = [m for k in sorted(exp)
                       for m in [_same_nonfinite(got[k].detach(), exp[k].detach(), atol, k)] if m]
    return res


def _run_backward_case(case, phase):
    """Calls the backward op directly with one argument corrupted."""
    import rnnfast  # noqa: F401

    cell = case["cell"]
    info = _cells.cell(cell)
    dt = DT[case["dtype"]]
    a = _raw_args(dict(case, corruptions=[]))
    y, final, ws = torch.ops.rnnfast.layer(cell, a["input"], _state_list(a), _weight_list(a),
                                           a["lengths"], case["reverse"], case["training"])
    b = {"grad_output": torch.randn_like(y), "grad_hy": torch.randn_like(final[0]),
         "grad_cy": torch.randn_like(final[1]) if info.cell_state else None,
         "input": a["input"], "lengths": a["lengths"], "workspace": ws,
         **{n: a[n] for n in WEIGHT_ARGS}}
    for corr in case["corruptions"]:
        _corrupt(b, corr, case, dt)
    T, B, I = a["input"].shape
    H = a["weight_ih"].shape[0] // info.gates
    P = case["P"]
    S = P or H
    want = {"grad_output": (T, B, S), "grad_hy": (B, S),
            "workspace": (T, B, rnnfast.ops.workspace_cols(cell, H, P)),
            "input": (T, B, I), "weight_ih": tuple(a["weight_ih"].shape),
            "weight_hh": tuple(a["weight_hh"].shape)}
    if info.cell_state:
        want["grad_cy"] = (B, H)
    if case["has_bias"]:
        want["bias_ih"] = want["bias_hh"] = (info.gates * H,)
    if P:
        want["weight_hr"] = (P, H)
    why = None
    if not case["training"]:
        why = "workspace empty (forward ran with training=False)"
    for n, shape in want.items():
        t = b[n]
        if t is None:
            if n in ("input", "weight_ih", "weight_hh", "workspace", "weight_hr"):
                why = why or f"{n} missing"
            continue
        if t.dtype != dt or tuple(t.shape) != shape:
            why = why or f"{n} dtype/shape"
    if b["weight_hr"] is not None and not P:
        why = why or "weight_hr added"
    why = why or _weights_problem(info, b)
    L = b["lengths"]
    if L is not None and (L.dtype != torch.int64 or L.dim() != 1 or L.shape[0] != B or
                          (B and (int(L.min()) < 0 or int(L.max()) > T))):
        why = why or "lengths"
    res = {"invalid_reason": why}
    phase("rnnfast")
    grad_state = [b["grad_hy"]] + ([b["grad_cy"]] if info.cell_state else [])
    try:
        outs = torch.ops.rnnfast.layer_backward(cell, b["grad_output"], grad_state, b["input"],
                                                _weight_list(b), b["lengths"], b["workspace"],
                                                case["reverse"])
        flat = [outs[0], *outs[1], *outs[2]]
        res["rnnfast"] = {"ok": True, "finite": bool(all(torch.isfinite(o).all() for o in flat))}
    except Exception as exc:  # noqa: BLE001
        res["rnnfast"] = {"ok": False, "type": type(exc).__name__, "msg": str(exc)[:400]}
    return res


def _run_huge_case(case, phase):
    """Sizes nothing can allocate.  The arguments are built first (stride-0 expanded views cost
    nothing), outside the try, so that an exception can only come from rnnfast."""
    import rnnfast

    name, cell = case["name"], case["cell"]
    G, H, I = _cells.cell(cell).gates, 4, 3
    x = torch.zeros(1, 1, I)
    w_ih, w_hh = torch.zeros(G * H, I), torch.zeros(G * H, H)
    if name == "op_T_2e44":  # reading the input needs 2^44 rows
        x = x.expand(2 ** 44, 1, I)
    elif name == "op_B_2e44":
        x = x.expand(1, 2 ** 44, I)
    elif name == "op_TB_2e31":  # 2^62 elements: byte count overflows int64
        x = x[..., :1].expand(2 ** 31, 2 ** 31, 1)
        w_ih = torch.zeros(G * H, 1)
    elif name == "op_I_2e44":
        x = x[..., :1].expand(1, 1, 2 ** 44)
        w_ih = torch.zeros(G * H, 1).expand(G * H, 2 ** 44)
    elif name == "op_H_2e30":  # W_hh alone would be 2^62 elements
        w_ih = torch.zeros(1, I).expand(G * 2 ** 30, I)
        w_hh = torch.zeros(1, 1).expand(G * 2 ** 30, 2 ** 30)
    calls = {
        "module_hidden_2e40": lambda: rnnfast.LSTM(4, 2 ** 40),
        "module_input_2e40": lambda: rnnfast.GRU(2 ** 40, 4),
        "cell_hidden_2e40": lambda: rnnfast.GRUCell(4, 2 ** 40),
        "module_T_2e44": lambda: rnnfast.LSTM(3, 4)(torch.zeros(1, 1, 3).expand(2 ** 44, 1, 3)),
    }
    fn = calls.get(name, lambda: torch.ops.rnnfast.layer(cell, x, [], [w_ih, w_hh], None, False,
                                                         True))
    phase("rnnfast")
    try:
        fn()
        return {"rnnfast": {"ok": True}}
    except Exception as exc:  # noqa: BLE001
        return {"rnnfast": {"ok": False, "type": type(exc).__name__, "msg": str(exc)[:400]}}


def _run_selftest_case(case, phase):
    """Deliberate failures, to test the harness itself."""
    phase("rnnfast")
    if case["name"] == "segfault":
        import faulthandler
        faulthandler._sigsegv()
    elif case["name"] == "hang":
        time.sleep(3600)
    elif case["name"] == "harness_bug":
        raise KeyError("deliberate")
    return {"rnnfast": {"ok": True}}


_RUNNERS = {"module": _run_module_case, "raw": _run_raw_case, "backward": _run_backward_case,
            "huge": _run_huge_case, "selftest": _run_selftest_case}


def _worker_main():
    import faulthandler

    faulthandler.enable()
    import rnnfast  # noqa: F401  (import once, up front)

    out = sys.stdout

    def send(obj):
        out.write(json.dumps(obj) + "\n")
        out.flush()

    send({"event": "ready"})
    for line in sys.stdin:
        req = json.loads(line)
        send({"event": "begin", "id": req["id"]})
        case = req["case"]
        try:
            res = _RUNNERS[case["type"]](case, lambda p: send({"event": "phase", "phase": p}))
            res["status"] = "done"
        except BaseException as exc:  # noqa: BLE001 - a bug in the harness, reported as such
            import traceback
            res = {"status": "harness-error", "error": traceback.format_exc()[-2000:]}
            del exc
        res.update(event="result", id=req["id"])
        send(res)


# ---------------------------------------------------------------------- parent side


class Worker:
    """A subprocess that runs cases; survives nothing, reports everything."""

    def __init__(self, case_timeout: float = CASE_TIMEOUT, env: dict = None):
        self.proc = None
        self.n = 0
        self.case_timeout = case_timeout
        self.extra_env = dict(env or {})

    def _start(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([HERE] + [p for p in sys.path if p])
        env.setdefault("OMP_NUM_THREADS", "2")
        env.update(self.extra_env)
        self.stderr = tempfile.TemporaryFile(mode="w+b")
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, env=env, text=True, bufsize=1)
        self.lines = queue.Queue()

        def pump(stream, q):
            for ln in stream:
                q.put(ln)
            q.put(None)

        threading.Thread(target=pump, args=(self.proc.stdout, self.lines), daemon=True).start()
        first = self._next(max(CASE_TIMEOUT, self.case_timeout) * 2)
        if first is None or first.get("event") != "ready":
            raise RuntimeError(f"fuzz worker failed to start: {first} {self._stderr_tail()}")

    def _next(self, timeout):
        try:
            ln = self.lines.get(timeout=timeout)
        except queue.Empty:
            return {"event": "timeout"}
        if ln is None:
            return None
        try:
            return json.loads(ln)
        except ValueError:
            return {"event": "noise", "line": ln}

    def _stderr_tail(self):
        try:
            self.stderr.seek(0)
            return self.stderr.read().decode(errors="replace")[-4000:]
        except Exception:  # noqa: BLE001
            return ""

    def close(self):
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except Exception:  # noqa: BLE001
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def run(self, case):
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.n += 1
        try:
            self.proc.stdin.write(json.dumps({"id": self.n, "case": case}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died between cases: reported below as a crash of this case
        phase = "setup"
        deadline = time.monotonic() + self.case_timeout
        while True:
            msg = self._next(max(0.1, deadline - time.monotonic()))
            if msg is None or msg.get("event") == "timeout":
                hung = msg is not None
                if hung:
                    self.proc.kill()
                rc = self.proc.wait()
                tail = self._stderr_tail()
                self.proc = None
                return {"status": "hang" if hung else "crashed", "phase": phase,
                        "returncode": rc, "stderr": tail}
            ev = msg.get("event")
            if ev == "phase":
                phase = msg["phase"]
            elif ev == "result":
                return msg


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
        return draw(st.sampled_from([usual] * 5 + _TORCH_DTYPES), label=label)

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


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker_main()
