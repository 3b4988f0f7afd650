"""Gradients of gradients (issue 14, item 1).

With ``create_graph=True`` the fused ops' backward recomputes the layer with differentiable
torch ops (rnnfast._reference.layer_backward), so every gradient can be differentiated again:
gradient penalties (WGAN-GP), MAML, Hessian-vector products, gradgradcheck. The backward ops
themselves are not differentiable and must raise, never return silent zeros, if a graph goes
through them. Oracle: torch.nn in float64 and torch.autograd.gradgradcheck.
"""
from __future__ import annotations

import pytest
import torch
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast
from rnnfast import _cells
from rnn_testutils import CELL_KIND_NAMES, KIND_NAMES, is_lstm, make_pair, op_args

T, B, I, H = 3, 2, 2, 3

# (kind, constructor kwargs): every cell, LSTM with and without projection, both directions,
# stacked
MODULE_CASES = [
    ("LSTM", {}),
    ("LSTM", {"proj_size": 2}),
    ("GRU", {}),
    ("RNN_TANH", {}),
    ("RNN_RELU", {}),
    ("LSTM", {"num_layers": 2, "bidirectional": True, "proj_size": 2}),
    ("GRU", {"num_layers": 2, "bidirectional": True}),
    ("RNN_TANH", {"num_layers": 2, "bidirectional": True}),
    ("RNN_RELU", {"bidirectional": True, "bias": False}),
]


def _case_id(case):
    kind, kw = case
    return kind + "".join(f"-{k}={v}" for k, v in sorted(kw.items()))


def _states(kind, kw, batch, hidden=H):
    layers = kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    h = torch.randn(layers, batch, kw.get("proj_size") or hidden, dtype=torch.float64)
    if is_lstm(kind):
        return [h, torch.randn(layers, batch, hidden, dtype=torch.float64)]
    return [h]


def _module_fn(module, kind, packed_lengths=None):
    """(x, *states, *params) -> every output of the module, flattened into a tuple, so that
    gradgradcheck differentiates with respect to input, initial states and every parameter."""
    names = [n for n, _ in module.named_parameters()]
    lstm = is_lstm(kind)

    def fn(x, *rest):
        nstates = 2 if lstm else 1
        states, params = rest[:nstates], rest[nstates:]
        hx = tuple(states) if lstm else states[0]
        inp = x
        if packed_lengths is not None:
            inp = pack_padded_sequence(x, packed_lengths, enforce_sorted=False)
        out, hn = functional_call(module, dict(zip(names, params)), (inp, hx))
        if packed_lengths is not None:
            out = out.data
        return (out,) + (tuple(hn) if lstm else (hn,))

    return fn


def _leaves(module, kind, kw, batch=B):
    x = torch.randn(T, batch, I, dtype=torch.float64)
    args = [x] + _states(kind, kw, batch) + [p.detach().clone() for p in module.parameters()]
    return [a.requires_grad_() for a in args]


@pytest.mark.parametrize("case", MODULE_CASES, ids=_case_id)
def test_gradgradcheck_modules(case):
    kind, kw = case
    _, new = make_pair(kind, I, H, **kw)
    args = _leaves(new, kind, kw)
    assert torch.autograd.gradgradcheck(_module_fn(new, kind), args, fast_mode=True)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_TANH"])
def test_gradgradcheck_full_jacobian(kind):
    """The slow mode (every entry of the second-order Jacobian), on one small layer a kind."""
    _, new = make_pair(kind, 2, 2)
    x = torch.randn(2, 2, 2, dtype=torch.float64)
    args = [x] + [torch.randn(1, 2, 2, dtype=torch.float64)] * (2 if is_lstm(kind) else 1)
    args = [a.clone().requires_grad_() for a in args]
    args += [p.detach().clone().requires_grad_() for p in new.parameters()]
    fn = _module_fn(new, kind)
    assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("case", [("LSTM", {"bidirectional": True, "proj_size": 2}),
                                  ("GRU", {"num_layers": 2}), ("RNN_RELU", {})], ids=_case_id)
def test_gradgradcheck_packed_sequence(case):
    """PackedSequence (unsorted lengths, so the permutation is in the graph too)."""
    kind, kw = case
    _, new = make_pair(kind, I, H, **kw)
    args = _leaves(new, kind, kw, batch=3)
    assert torch.autograd.gradgradcheck(_module_fn(new, kind, packed_lengths=[2, 3, 1]), args,
                                        fast_mode=True)


@pytest.mark.parametrize("kind", CELL_KIND_NAMES)
def test_gradgradcheck_cells(kind):
    _, new = make_pair(kind, I, H)
    names = [n for n, _ in new.named_parameters()]
    lstm = is_lstm(kind)

    def fn(x, h, c, *params):
        out = functional_call(new, dict(zip(names, params)), (x, (h, c) if lstm else h))
        return tuple(out) if lstm else (out,)

    args = [torch.randn(B, I, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64),
            torch.randn(B, H, dtype=torch.float64)]
    args += [p.detach().clone() for p in new.parameters()]
    args = [a.requires_grad_() for a in args]
    if not lstm:  # c is unused: keep it out of the check
        args[2].requires_grad_(False)
    assert torch.autograd.gradgradcheck(fn, args, fast_mode=True)


def _penalty_and_grads(module, x, hx):
    """WGAN-GP style: the penalty is the squared norm of d(critic)/d(input); returns its
    gradient with respect to the input, the initial states and every parameter."""
    out, _ = module(x, hx)
    critic = (out.tanh() * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum()
    gx, = torch.autograd.grad(critic, x, create_graph=True)
    penalty = ((gx.flatten(1).norm(dim=1) - 1) ** 2).mean()
    states = list(hx) if isinstance(hx, tuple) else [hx]
    return [penalty] + list(torch.autograd.grad(penalty, [x] + states + list(module.parameters())))


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_gradient_penalty_matches_torch(kind):
    kw = dict(num_layers=2, bidirectional=True)
    if kind == "LSTM":
        kw["proj_size"] = 2
    ref, new = make_pair(kind, 4, 5, **kw)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    states = _states(kind, kw, 3, hidden=5)
    results = []
    for module in (ref, new):
        xs = x.clone().requires_grad_()
        st = [s.clone().requires_grad_() for s in states]
        hx = tuple(st) if kind == "LSTM" else st[0]
        results.append(_penalty_and_grads(module, xs, hx))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    assert results[1][1].abs().max() > 1e-6, "trivial gradient: the test would not see zeros"


@pytest.mark.parametrize("kind", KIND_NAMES + CELL_KIND_NAMES)
def test_hessian_vector_product_matches_torch(kind):
    """H v with respect to all parameters (double backward of the loss), against torch.nn."""
    kw = dict(num_layers=2) if kind in KIND_NAMES else {}
    ref, new = make_pair(kind, 3, 4, **kw)
    x = torch.randn(5, 2, 3, dtype=torch.float64) if kind in KIND_NAMES else \
        torch.randn(2, 3, dtype=torch.float64)
    vs = [torch.randn_like(p) for p in ref.parameters()]
    hvps = []
    for module in (ref, new):
        params = list(module.parameters())
        out = module(x)
        out = out[0] if isinstance(out, tuple) else out
        loss = (out.sin() * out).sum()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        hvps.append(torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vs)), params))
    for got, want in zip(hvps[1], hvps[0]):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    assert max(h.abs().max() for h in hvps[1]) > 1e-6


def test_first_order_stays_on_the_fused_backward(monkeypatch):
    """Without create_graph the fused backward op runs (never the differentiable recompute);
    with it, the recompute runs, and both give the same first-order gradient."""
    from rnnfast import _reference

    calls = []
    real = _reference.layer_backward
    monkeypatch.setattr(_reference, "layer_backward",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    _, new = make_pair("LSTM", 3, 4)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    g1, = torch.autograd.grad(new(x)[0].square().sum(), x)
    assert calls == []
    g2, = torch.autograd.grad(new(x)[0].square().sum(), x, create_graph=True)
    assert calls and g2.requires_grad
    torch.testing.assert_close(g1, g2, atol=1e-12, rtol=0)


def test_backward_op_is_not_silently_differentiable():
    """A graph through the backward op raises when differentiated (was: zeros + a warning)."""
    _, new = make_pair("GRU", 3, 4)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    w = [new.weight_ih_l0, new.weight_hh_l0, new.bias_ih_l0, new.bias_hh_l0]
    out, _, ws = torch.ops.rnnfast.layer("gru", x, [], w, None, False, True)
    gy = torch.randn_like(out, requires_grad=True)
    grad_input, grad_state, grad_weights = torch.ops.rnnfast.layer_backward(
        "gru", gy, [], x, w, None, ws.detach(), False)
    for g in [grad_input, *grad_state, *grad_weights]:
        with pytest.raises(RuntimeError, match="not implemented"):
            g.sum().backward(retain_graph=True)


def test_fused_first_order_matches_recompute_float32():
    """float32: the create_graph path (recompute) agrees with the fused first-order path."""
    ref, new = make_pair("LSTM", 8, 16, num_layers=2, dtype=torch.float32)
    x = torch.randn(7, 3, 8, requires_grad=True)
    fused = torch.autograd.grad(new(x)[0].sum(), [x] + list(new.parameters()))
    graph = torch.autograd.grad(new(x)[0].sum(), [x] + list(new.parameters()), create_graph=True)
    for a, b in zip(fused, graph):
        torch.testing.assert_close(a, b.detach(), atol=3e-5, rtol=1e-5)


def test_raw_op_double_backward_with_lengths_and_reverse():
    """The op itself (unsorted lengths, reverse, all optional tensors given): gradgradcheck."""
    torch.manual_seed(3)

    def r(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    x, hx, cx = r(4, 3, 2), r(3, 2), r(3, 5)
    weights = [r(20, 2), r(20, 2), r(20), r(20), r(2, 5)]
    lengths = torch.tensor([2, 4, 1])

    def fn(x, hx, cx, *weights):
        out, final = rnnfast.ops.layer("lstm", x, [hx, cx], list(weights), lengths, True)
        return (out, *final)

    assert torch.autograd.gradgradcheck(fn, (x, hx, cx, *weights), fast_mode=True)


def _op_args(cell, proj, seed, with_state=True):
    """(state, weights) of the op for `cell`, leaves: B=3, I=2, H=5, weights with biases (and
    a weight_hr of 2 rows with proj)."""
    _, _, state, weights, _, _, _ = op_args(cell, 2 if proj else 0, B=3, I=2, H=5, seed=seed,
                                            state=with_state)
    return state, weights


# every cell, and with a projection each cell that takes one
OP_CASES = [(c, False) for c in rnnfast.ops.CELLS] + [
    (c, True) for c in rnnfast.ops.CELLS if _cells.cell(c).projection]


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("layout", ["dense", "unsorted_lengths", "packed"])
@pytest.mark.parametrize("cell,proj", OP_CASES)
@pytest.mark.parametrize("with_state", [True, False], ids=["state", "zero_state"])
def test_recompute_matches_fused_op(cell, proj, layout, reverse, with_state):
    """The create_graph path recomputes with rnnfast._reference; gradgradcheck alone cannot
    see a reference that is wrong in a self-consistent way, so its outputs and first-order
    gradients are tied here to the fused op's (which the parity suite ties to torch), for
    every layout the op takes: dense, unsorted lengths, packed rows."""
    state, weights = _op_args(cell, proj, seed=7, with_state=with_state)
    g = torch.Generator().manual_seed(8)
    lengths = None
    if layout == "dense":
        x = torch.randn(4, 3, 2, generator=g, dtype=torch.float64)
    elif layout == "unsorted_lengths":
        x = torch.randn(4, 3, 2, generator=g, dtype=torch.float64)
        lengths = torch.tensor([2, 4, 1])
    else:
        lengths = torch.tensor([4, 2, 1])
        x = torch.randn(int(lengths.sum()), 2, generator=g, dtype=torch.float64)
    x.requires_grad_()
    leaves = [x] + state + weights

    def outputs(fn):
        out, final = fn(cell, x, state, weights, lengths, reverse)
        return [out] + list(final)

    fused = outputs(rnnfast.ops.layer)
    ref = outputs(rnnfast._reference.layer)
    assert len(fused) == len(ref) == 1 + _cells.cell(cell).states
    for f, r in zip(fused, ref):
        torch.testing.assert_close(f, r, atol=1e-12, rtol=0)
    ups = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in fused]
    first = torch.autograd.grad(fused, leaves, ups)
    graph = torch.autograd.grad(outputs(rnnfast.ops.layer), leaves, ups, create_graph=True)
    assert all(t.requires_grad for t in graph)
    for f, r in zip(first, graph):
        torch.testing.assert_close(f, r.detach(), atol=1e-12, rtol=0)


def test_reference_layer_backward_returns_lists():
    """rnnfast._reference.layer_backward (the create_graph path) returns (grad_input, one
    gradient per given state, one per weight), None where a tensor needs none."""
    from rnnfast import _reference

    state, weights = _op_args("lstm", True, seed=2)
    x = torch.randn(3, 3, 2, dtype=torch.float64)          # needs no gradient
    weights[2].requires_grad_(False)
    out, final = _reference.layer("lstm", x, state, weights)
    gi, gs, gw = _reference.layer_backward("lstm", False, torch.ones_like(out), [None, None], x,
                                           state, weights, None)
    assert gi is None and len(gs) == 2 and len(gw) == 5
    assert gw[2] is None and all(g is not None and g.requires_grad for g in gs + gw[:2] + gw[3:])
    gi, gs, gw = _reference.layer_backward("lstm", False, None, [None, torch.ones_like(final[1])],
                                           x, [], weights, None)
    assert gi is None and gs == [] and len(gw) == 5
