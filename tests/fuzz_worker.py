"""The crash-isolating worker of test_fuzz_malformed.py, and the parent's handle on it.

A case is a JSON dict. The worker (this file run as a script with --worker, one long-lived
subprocess) builds the tensors from it (seeded), runs rnnfast first and torch second (or the
plain-PyTorch reference for raw-op cases), and replies with a verdict, so that a segfault, an
abort or a sanitizer report is a failed test naming the case, not a dead test run. The parent
(Worker) applies no policy: test_fuzz_malformed.check_outcome does.

One file (over 500 lines) on purpose: it is the whole program the worker subprocess runs
(building a case's tensors, restating the ops' contract to predict a verdict, running each case
type) plus the parent's end of the same JSON protocol, which are read and changed together.
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

import torch
import torch.nn as nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # the worker runs this file as a script
    sys.path.insert(0, HERE)

from rnnfast import _cells  # noqa: E402
from rnn_testutils import (ATOL, DT, FUZZ_CLASSES, STATE_ARGS, WEIGHT_ARGS,  # noqa: E402
                           state_list, upstream_like, weight_list)

# Seconds one malformed case may take in the worker before it counts as a hang (sanitized
# builds are ~3-10x slower; the worker's first case also pays for importing torch).
CASE_TIMEOUT = float(os.environ.get("RNNFAST_FUZZ_CASE_TIMEOUT", "60"))


TORCH_DTYPES = ["float32", "float64", "float16", "bfloat16", "int64", "int32", "bool",
                 "complex64"]


def _own_shape(param, G, H):
    """The shape of a cell's own parameter: [H] or, layer-norm gains, [G * H]."""
    return (G * H,) if param.rows == "gate_rows" else (H,)


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

    cls, extra = FUZZ_CLASSES[case["kind"]]
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
    # the cell's own parameters (e.g. peephole weights [H], layer-norm gains [G * H]); None
    # for every other one
    own = [p for p in _cells.PARAMS if p.presence == "cell"]
    for k, p in enumerate(own):
        a[p.name] = (_make(_own_shape(p, G, H), case["dtype"], s + 9 + k) * 0.5
                     if p.name in info.params else None)
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
    states = state_list(a)
    if len(states) not in (0, info.states):
        return f"{len(states)} states for a cell with {info.states}"
    for k, (t, want) in enumerate(zip(states, _cells.state_shapes(info, B, H, P))):
        if tuple(t.shape) != want:
            return f"state[{k}] shape"
    for n in ("bias_ih", "bias_hh"):
        if a[n] is not None and tuple(a[n].shape) != (G * H,):
            return f"{n} shape"
    for p in _cells.PARAMS:  # the cell's own
        if p.name in info.params and a[p.name] is not None and (
                tuple(a[p.name].shape) != _own_shape(p, G, H)):
            return f"{p.name} shape"
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
        out, final, _ = op(cell, args["input"], state_list(args), weight_list(args),
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
    exp = _outputs(*_reference.layer(cell, ref_args["input"], state_list(ref_args),
                                     weight_list(ref_args), a["lengths"], case["reverse"]))
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
    y, final, ws = torch.ops.rnnfast.layer(cell, a["input"], state_list(a), weight_list(a),
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
    for p in _cells.PARAMS:  # the cell's own
        if p.name in info.params:
            want[p.name] = _own_shape(p, info.gates, H)
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
                                                weight_list(b), b["lengths"], b["workspace"],
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



if __name__ == "__main__" and "--worker" in sys.argv:
    _worker_main()
