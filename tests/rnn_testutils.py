"""Shared helpers for the rnnfast test suite.

The oracle everywhere is torch.nn: a torch module and an rnnfast module hold the same
parameters (loaded with ``load_state_dict(strict=True)``), see the same inputs, and receive the
same random upstream gradient on every differentiable output.  Results (outputs, final states,
gradients of every leaf input and every named parameter) are collected into flat dicts and
compared key by key.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import random
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn
from hypothesis import HealthCheck, Phase, seed, settings
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnfast

# The SIMD paths of the CPU kernels this CPU supports (rnnfast._C.set_simd can switch to).
SIMD_PATHS = [p for p in ("scalar", "avx2", "avx512") if rnnfast._C.cpu_supports(p)]


@contextlib.contextmanager
def simd_path(name: str):
    """Runs the block on SIMD path `name`, then restores the path it found."""
    before = rnnfast._C.simd()
    rnnfast._C.set_simd(name)
    try:
        yield
    finally:
        rnnfast._C.set_simd(before)
from rnnfast import _cells

# --------------------------------------------------------------------------------------------
# Module kinds
# --------------------------------------------------------------------------------------------

# kind -> (class name, extra constructor kwargs)
KINDS: Dict[str, tuple] = {
    "LSTM": ("LSTM", {}),
    "GRU": ("GRU", {}),
    "RNN_TANH": ("RNN", {"nonlinearity": "tanh"}),
    "RNN_RELU": ("RNN", {"nonlinearity": "relu"}),
}
KIND_NAMES = list(KINDS)

CELL_KINDS: Dict[str, tuple] = {
    "LSTMCell": ("LSTMCell", {}),
    "GRUCell": ("GRUCell", {}),
    "RNNCell_TANH": ("RNNCell", {"nonlinearity": "tanh"}),
    "RNNCell_RELU": ("RNNCell", {"nonlinearity": "relu"}),
}
CELL_KIND_NAMES = list(CELL_KINDS)

# The modules that run each op cell: (torch.nn class name or None when torch has no such cell,
# rnnfast class name, constructor kwargs).
CELL_MODULES: Dict[str, tuple] = {
    "lstm": ("LSTM", "LSTM", {}),
    "gru": ("GRU", "GRU", {}),
    "rnn_tanh": ("RNN", "RNN", {"nonlinearity": "tanh"}),
    "rnn_relu": ("RNN", "RNN", {"nonlinearity": "relu"}),
    "lstm_coupled": (None, "LSTM", {"coupled_gates": True}),
    "lstm_peephole": (None, "LSTM", {"peephole": True}),
    "lstm_coupled_peephole": (None, "LSTM", {"coupled_gates": True, "peephole": True}),
    "lstm_ln": (None, "LSTM", {"layer_norm": True}),
    "lstm_coupled_ln": (None, "LSTM", {"coupled_gates": True, "layer_norm": True}),
    "lstm_peephole_ln": (None, "LSTM", {"peephole": True, "layer_norm": True}),
    "lstm_coupled_peephole_ln": (None, "LSTM", {"coupled_gates": True, "peephole": True,
                                                "layer_norm": True}),
    "gru_ln": (None, "GRU", {"layer_norm": True}),
}


def modules_for_cell(cell: str) -> List[tuple]:
    """[(class, kwargs)] of the modules that run the op cell `cell`: rnnfast's, and torch's
    twin where torch has the cell."""
    torch_name, fast_name, kw = CELL_MODULES[cell]
    out = [(getattr(rnnfast, fast_name), kw)]
    if torch_name is not None:
        out.append((getattr(nn, torch_name), {k: v for k, v in kw.items()
                                              if k != "coupled_gates"}))
    return out


DTYPES = {"float32": torch.float32, "float64": torch.float64}

# Tolerances required by the project: float64 atol 1e-9 (rtol 0), float32 atol 3e-5.
ATOL = {torch.float64: 1e-9, torch.float32: 3e-5}


def is_lstm(kind: str) -> bool:
    return kind.startswith("LSTM")


def torch_cls(kind: str):
    table = CELL_KINDS if kind in CELL_KINDS else KINDS
    return getattr(nn, table[kind][0])


def fast_cls(kind: str):
    table = CELL_KINDS if kind in CELL_KINDS else KINDS
    return getattr(rnnfast, table[kind][0])


def kind_kwargs(kind: str) -> dict:
    table = CELL_KINDS if kind in CELL_KINDS else KINDS
    return dict(table[kind][1])


def make_pair(kind: str, *args, seed: int = 0, dtype=torch.float64, **kw):
    """Build (torch_module, rnnfast_module) with identical parameters.

    The torch module is built under ``torch.manual_seed(seed)``; its state_dict is loaded into
    the rnnfast module with strict=True.
    """
    kw = {**kind_kwargs(kind), **kw}
    torch.manual_seed(seed)
    ref = torch_cls(kind)(*args, dtype=dtype, **kw)
    new = fast_cls(kind)(*args, dtype=dtype, **kw)
    new.load_state_dict(ref.state_dict(), strict=True)
    return ref, new


# --------------------------------------------------------------------------------------------
# Arguments of the raw ops
# --------------------------------------------------------------------------------------------


def op_args(cell: str, proj: int = 0, lengths: bool = True, reverse: bool = False,
            dtype=torch.float64, T: int = 3, B: int = 2, I: int = 4, H: int = 5,
            requires_grad: bool = True, bias: bool = True, state: bool = True, seed: int = 0,
            device=None, training: bool = True) -> tuple:
    """(cell, input, state, weights, lengths, reverse, training) for torch.ops.rnnfast.layer,
    shaped from the cell's description: the cell's initial states ([] with state=False) and
    its weights in the ops' order, with biases (bias) and a projection of `proj` rows
    (proj > 0). Random values from `seed`; lengths [T, T - 1, ...][:B] or None."""
    from rnnfast import _cells

    g = torch.Generator().manual_seed(seed)
    info = _cells.cell(cell)

    def r(shape):
        t = torch.randn(*shape, dtype=dtype, generator=g).to(device)
        return t.requires_grad_(requires_grad)

    sizes = _cells.extent_sizes(info, I, H, proj)
    states = [r(s) for s in _cells.state_shapes(info, B, H, proj)] if state else []
    weights = [r(_cells.param_shape(p, sizes)) for p in _cells.params_of(info, bias, proj > 0)]
    return (cell, r((T, B, I)), states, weights,
            torch.tensor([T, T - 1][:B]) if lengths else None, reverse, training)


def projections(cell: str) -> List[int]:
    """The projection sizes to test a cell with: 0, and 3 where the cell takes one."""
    from rnnfast import _cells

    return [0, 3] if _cells.cell(cell).projection else [0]


# --------------------------------------------------------------------------------------------
# Running a module forward + backward and collecting everything comparable
# --------------------------------------------------------------------------------------------


def upstream_like(t: torch.Tensor, seed: int) -> torch.Tensor:
    """A deterministic random upstream gradient with t's shape and dtype."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device, t.dtype)


def fwd_bwd(module: nn.Module, leaves: Dict[str, Optional[torch.Tensor]], call: Callable,
            upstream_seed: int = 1234, backward: bool = True,
            loss_keys: Optional[Sequence[str]] = None,
            no_grad_leaves: Iterable[str] = ()) -> Dict[str, object]:
    """Run ``call(module, **leaves)`` and backprop a random upstream gradient.

    ``leaves`` maps names to base tensors (or None); each is cloned into a fresh leaf that
    requires grad (except those named in ``no_grad_leaves``).  ``call`` returns a dict of named
    results: floating tensors that require grad take part in the loss (unless ``loss_keys``
    restricts which ones), everything else (ints, batch_sizes...) is just compared.  Returns a flat dict of results and gradients
    ("grad:<leaf>" and "grad:param:<name>").  Also asserts the inputs were not mutated.
    """
    fresh = {}
    for k, v in leaves.items():
        if v is None:
            fresh[k] = None
        else:
            fresh[k] = v.detach().clone().requires_grad_(
                v.is_floating_point() and k not in no_grad_leaves)
    originals = {k: v.detach().clone() for k, v in fresh.items() if v is not None}

    results = call(module, **fresh)
    out: Dict[str, object] = {}
    loss = None
    for i, (k, v) in enumerate(sorted(results.items())):
        out[k] = v.detach() if isinstance(v, torch.Tensor) else v
        if (isinstance(v, torch.Tensor) and v.is_floating_point() and v.requires_grad
                and (loss_keys is None or k in loss_keys)):
            term = (v * upstream_like(v, upstream_seed + 17 * i)).sum()
            loss = term if loss is None else loss + term

    if backward and loss is not None:
        leaf_names = [k for k, v in fresh.items() if v is not None and v.requires_grad]
        params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        targets = [fresh[k] for k in leaf_names] + [p for _, p in params]
        grads = torch.autograd.grad(loss, targets, allow_unused=True, materialize_grads=True)
        names = [f"grad:{k}" for k in leaf_names] + [f"grad:param:{n}" for n, _ in params]
        for n, g in zip(names, grads):
            out[n] = g.detach()

    for k, v in originals.items():
        assert torch.equal(fresh[k].detach(), v), f"module mutated its input {k!r}"
    return out


def assert_results_close(actual: Dict[str, object], expected: Dict[str, object], atol: float,
                         rtol: float = 0.0, what: str = ""):
    """Compare two result dicts from fwd_bwd (rnnfast = actual, torch = expected)."""
    assert sorted(actual) == sorted(expected), (
        f"{what}: result keys differ: rnnfast {sorted(actual)} vs torch {sorted(expected)}")
    for k in sorted(expected):
        a, e = actual[k], expected[k]
        if isinstance(e, torch.Tensor):
            assert isinstance(a, torch.Tensor), f"{what}: {k} is {type(a)}"
            assert a.shape == e.shape, f"{what}: {k} shape {tuple(a.shape)} vs torch {tuple(e.shape)}"
            assert a.dtype == e.dtype, f"{what}: {k} dtype {a.dtype} vs torch {e.dtype}"
            if e.is_floating_point():
                if e.numel():
                    assert torch.isfinite(a).all() or not torch.isfinite(e).all(), \
                        f"{what}: {k} has non-finite values"
                torch.testing.assert_close(
                    a, e, atol=atol, rtol=rtol,
                    msg=lambda m, k=k: f"{what}: mismatch in {k}: {m}")
            else:
                assert torch.equal(a, e), f"{what}: {k}: {a} vs torch {e}"
        else:
            assert a == e, f"{what}: {k}: {a!r} vs torch {e!r}"


# --------------------------------------------------------------------------------------------
# Standard forward calls
# --------------------------------------------------------------------------------------------


def _states(kind_is_lstm: bool, hn) -> Dict[str, torch.Tensor]:
    if kind_is_lstm:
        assert isinstance(hn, tuple) and len(hn) == 2, f"LSTM must return (h_n, c_n), got {type(hn)}"
        return {"h_n": hn[0], "c_n": hn[1]}
    assert isinstance(hn, torch.Tensor), f"expected a tensor h_n, got {type(hn)}"
    return {"h_n": hn}


def make_hx_arg(lstm: bool, h0, c0):
    if h0 is None:
        return None
    return (h0, c0) if lstm else h0


def call_dense(lstm: bool, x_view: Callable = None, h_view: Callable = None):
    """A `call` for fwd_bwd: tensor input (batched or unbatched), optional hx.

    x_view / h_view map the contiguous leaf to the tensor actually passed (to build
    non-contiguous or expanded inputs)."""
    x_view = x_view or (lambda t: t)
    h_view = h_view or (lambda t: t)

    def call(m, x, h0=None, c0=None):
        hx = make_hx_arg(lstm, None if h0 is None else h_view(h0),
                         None if c0 is None else h_view(c0))
        if hx is None:
            out, hn = m(x_view(x))
        else:
            out, hn = m(x_view(x), hx)
        assert isinstance(out, torch.Tensor) and not isinstance(out, PackedSequence)
        return {"out": out, **_states(lstm, hn)}

    return call


def call_packed(lstm: bool, lengths: Sequence[int], enforce_sorted: bool, batch_first: bool):
    """A `call` for fwd_bwd: the padded leaf is packed inside the graph."""

    def call(m, x, h0=None, c0=None):
        packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first,
                                      enforce_sorted=enforce_sorted)
        hx = make_hx_arg(lstm, h0, c0)
        out, hn = m(packed) if hx is None else m(packed, hx)
        assert isinstance(out, PackedSequence), f"packed input must give PackedSequence, got {type(out)}"
        res = {"out.data": out.data, "out.batch_sizes": out.batch_sizes, **_states(lstm, hn)}
        res["out.sorted_indices"] = out.sorted_indices
        res["out.unsorted_indices"] = out.unsorted_indices
        return res

    return call


def hx_shapes(kind: str, num_layers: int, bidirectional: bool, batch: Optional[int], hidden: int,
              proj_size: int = 0):
    d = 2 if bidirectional else 1
    hsz = proj_size if proj_size > 0 else hidden
    lead = (num_layers * d,) if batch is None else (num_layers * d, batch)
    h_shape = lead + (hsz,)
    c_shape = lead + (hidden,) if is_lstm(kind) else None
    return h_shape, c_shape


def randn(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def compare_modules(kind: str, ref: nn.Module, new: nn.Module, leaves: dict, call: Callable,
                    dtype, what: str = "", atol: Optional[float] = None, rtol: float = 0.0,
                    **fwd_kw):
    expected = fwd_bwd(ref, leaves, call, **fwd_kw)
    actual = fwd_bwd(new, leaves, call, **fwd_kw)
    assert_results_close(actual, expected, atol if atol is not None else ATOL[dtype], rtol=rtol,
                         what=what)
    return actual, expected


# --------------------------------------------------------------------------------------------
# Pairwise (all-pairs) covering arrays, deterministic
# --------------------------------------------------------------------------------------------


def pairwise(factors: Dict[str, list], valid: Callable[[dict], bool] = lambda row: True,
             seed: int = 0, candidates: int = 30) -> List[dict]:
    """Return rows (dicts) such that every pair of values of every two factors that can occur
    together in a valid row occurs in some row.  ``valid`` must accept partial rows (it is
    called with the factors assigned so far).  Greedy, seeded, deterministic."""
    names = list(factors)
    rng = random.Random(seed)

    def pair_ok(a, va, b, vb):
        return valid({a: va, b: vb})

    uncovered = set()
    for a, b in itertools.combinations(range(len(names)), 2):
        for va in range(len(factors[names[a]])):
            for vb in range(len(factors[names[b]])):
                if pair_ok(names[a], factors[names[a]][va], names[b], factors[names[b]][vb]):
                    uncovered.add((a, va, b, vb))

    def gain(assign: dict, fi: int, vi: int) -> int:
        g = 0
        for fj, vj in assign.items():
            key = (fj, vj, fi, vi) if fj < fi else (fi, vi, fj, vj)
            if key in uncovered:
                g += 1
        return g

    rows = []
    while uncovered:
        best, best_gain = None, -1
        for _ in range(candidates):
            # seed the row with one uncovered pair so progress is guaranteed
            a, va, b, vb = rng.choice(sorted(uncovered))
            assign = {a: va, b: vb}
            order = [i for i in range(len(names)) if i not in assign]
            rng.shuffle(order)
            for fi in order:
                scored = []
                for vi in range(len(factors[names[fi]])):
                    trial = {names[k]: factors[names[k]][v] for k, v in assign.items()}
                    trial[names[fi]] = factors[names[fi]][vi]
                    if valid(trial):
                        scored.append((gain(assign, fi, vi), rng.random(), vi))
                assert scored, f"no valid value for factor {names[fi]}"
                assign[fi] = max(scored)[2]
            total = sum(
                1 for x, y in itertools.combinations(sorted(assign), 2)
                if (x, assign[x], y, assign[y]) in uncovered)
            if total > best_gain:
                best, best_gain = dict(assign), total
        for x, y in itertools.combinations(sorted(best), 2):
            uncovered.discard((x, best[x], y, best[y]))
        rows.append({names[i]: factors[names[i]][v] for i, v in sorted(best.items())})
    return rows


def row_id(row: dict) -> str:
    parts = []
    for k, v in row.items():
        if isinstance(v, bool):
            if v:
                parts.append(k)
        elif k == "num_layers":
            parts.append(f"L{v}")
        elif k == "proj_size":
            if v:
                parts.append(f"proj{v}")
        else:
            parts.append(f"{v}")
    return "-".join(parts) or "default"


# --------------------------------------------------------------------------------------------
# Fuzzing: budget and reproducibility (test_fuzz_parity.py, test_fuzz_malformed.py and the
# fuzz worker), and the names the fuzz gives the tensors of the raw ops' lists
# --------------------------------------------------------------------------------------------

FUZZ_SEED = os.environ.get("RNNFAST_FUZZ_SEED")
FUZZ_SCALE = float(os.environ.get("RNNFAST_FUZZ_SCALE", "1"))


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
FUZZ_CLASSES = {"LSTM": ("LSTM", {}), "GRU": ("GRU", {}), "RNN_TANH": ("RNN", {"nonlinearity": "tanh"}),
        "RNN_RELU": ("RNN", {"nonlinearity": "relu"})}
# The raw ops' cells, and the names the fuzz gives the tensors of their lists: the state list
# holds hx (and cx for a cell with a cell state), the weights list the present parameters in
# the C++ core's order.
CELLS = rnnfast.ops.CELLS
STATE_ARGS = ("hx", "cx")
WEIGHT_ARGS = tuple(p.name for p in _cells.PARAMS)


def state_list(a):
    return [a[n] for n in STATE_ARGS if a.get(n) is not None]


def weight_list(a):
    return [a[n] for n in WEIGHT_ARGS if a.get(n) is not None]


# ============================================================================================


def count_calls(monkeypatch, owner, name: str) -> list:
    """Replaces owner.<name> (a function, which still runs) with one that appends its first
    argument to the returned list at every call."""
    calls = []
    real = getattr(owner, name)

    def counted(*args, **kw):
        calls.append(args[0])
        return real(*args, **kw)
    monkeypatch.setattr(owner, name, counted)
    return calls
