"""torch.compile(fullgraph=True) through rnnfast modules: compiled against eager rnnfast and
against torch.nn's modules holding the same state_dict (float64); and torch.library.opcheck of
the two raw ops (rnnfast::layer, rnnfast::layer_backward) over their tensor lists, for every
cell: given or zero initial states, with and without biases, with a projection where the cell
takes one, with and without lengths, padded and packed.
"""
import pytest
import torch
import torch.nn as nn

import rnnfast
from rnn_testutils import ATOL, op_args, projections


class Tagger(nn.Module):
    """A small model with an rnnfast recurrent layer in the middle (lib=nn: torch's, for the
    reference)."""

    def __init__(self, cls, lib=rnnfast, **kw):
        super().__init__()
        self.inp = nn.Linear(4, 3)
        self.rnn = getattr(lib, cls)(3, 5, **kw)
        d = 2 if kw.get("bidirectional") else 1
        out_h = kw.get("proj_size") or 5
        self.out = nn.Linear(d * out_h, 2)

    def forward(self, x, hx=None):
        y, hn = self.rnn(torch.tanh(self.inp(x)), hx)
        h = hn[0] if isinstance(hn, tuple) else hn
        return self.out(y), h


def _grads(model, x, h0=None):
    y, h = model(x, h0)
    loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum() + h.square().sum()
    states = [] if h0 is None else list(h0) if isinstance(h0, tuple) else [h0]
    leaves = [t for t in [x, *states] if t.requires_grad] + list(model.parameters())
    return y.detach(), h.detach(), torch.autograd.grad(loss, leaves)


def _torch_twin(model, cls, kw):
    """The same Tagger on torch.nn's recurrent layer, with model's values, in float64."""
    twin = Tagger(cls, lib=nn, **kw).double().train(model.training)
    twin.load_state_dict(model.state_dict())
    return twin


def _double(t):
    if t is None:
        return None
    if isinstance(t, tuple):
        return tuple(_double(u) for u in t)
    return t.detach().double().requires_grad_(t.requires_grad)


def _compare_eager_compiled(model, x, h0=None, backend="aot_eager", atol=1e-6, cls=None, kw=()):
    """Compiled vs eager rnnfast (to atol), and compiled rnnfast vs torch.nn's module with the
    same state_dict in float64 (to the project's tolerance for model's dtype): outputs, final
    state and the gradients of the input, initial states and every parameter."""
    torch._dynamo.reset()
    eager = _grads(model, x, h0)
    compiled_model = torch.compile(model, fullgraph=True, backend=backend)
    comp = _grads(compiled_model, x, h0)
    torch.testing.assert_close(comp[0], eager[0], atol=atol, rtol=0)
    torch.testing.assert_close(comp[1], eager[1], atol=atol, rtol=0)
    for a, b in zip(comp[2], eager[2]):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)
    ref = _grads(_torch_twin(model, cls, dict(kw)), _double(x), _double(h0))
    assert len(ref[2]) == len(comp[2])
    tol = ATOL[x.dtype]
    for i, (a, b) in enumerate(zip([comp[0], comp[1], *comp[2]], [ref[0], ref[1], *ref[2]])):
        torch.testing.assert_close(a.double(), b, atol=tol, rtol=0,
                                   msg=lambda m, i=i: f"compiled vs torch, item {i}: {m}")


@pytest.mark.parametrize("cls,kw", [
    ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("LSTM", dict(proj_size=2, batch_first=True)),
    ("GRU", dict(num_layers=2, bidirectional=True, batch_first=True)),
    ("RNN", dict(num_layers=2, nonlinearity="relu")),
    ("RNN", dict(bidirectional=True, nonlinearity="tanh")),
], ids=["LSTM-L2-bi", "LSTM-proj-bf", "GRU-L2-bi-bf", "RNN_RELU-L2", "RNN_TANH-bi"])
def test_compile_fullgraph_aot_eager(cls, kw):
    torch.manual_seed(0)
    model = Tagger(cls, **kw).double()
    x = torch.randn(3, 4, 4, dtype=torch.float64, requires_grad=True)
    _compare_eager_compiled(model, x, backend="aot_eager", atol=1e-10, cls=cls, kw=kw)


@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_compile_fullgraph_with_hx_eval(cls):
    torch.manual_seed(0)
    model = Tagger(cls, num_layers=2).double().eval()
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 2, 5, dtype=torch.float64, requires_grad=True)
    h0 = (h, torch.randn(2, 2, 5, dtype=torch.float64)) if cls == "LSTM" else h
    _compare_eager_compiled(model, x, h0, backend="aot_eager", atol=1e-10, cls=cls,
                            kw=dict(num_layers=2))


@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell"])
def test_compile_fullgraph_cells(cls):
    torch.manual_seed(0)
    cell = getattr(rnnfast, cls)(3, 4).double()

    def step(x, h):
        out = cell(x, h)
        return out[0] if isinstance(out, tuple) else out

    x = torch.randn(2, 3, dtype=torch.float64)
    h = torch.randn(2, 4, dtype=torch.float64)
    h = (h, h.clone()) if cls == "LSTMCell" else h
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(x, h)
    torch.testing.assert_close(got, step(x, h), atol=1e-12, rtol=0)
    ref = getattr(nn, cls)(3, 4).double()
    ref.load_state_dict(cell.state_dict())
    want = ref(x, h)
    torch.testing.assert_close(got, want[0] if isinstance(want, tuple) else want,
                               atol=ATOL[torch.float64], rtol=0)


def test_compile_fullgraph_inductor():
    """One small case through the default (inductor) backend, float32."""
    torch.manual_seed(0)
    kw = dict(num_layers=2, bidirectional=True)
    model = Tagger("LSTM", **kw)
    x = torch.randn(3, 2, 4, requires_grad=True)
    _compare_eager_compiled(model, x, backend="inductor", atol=1e-5, cls="LSTM", kw=kw)


@pytest.mark.parametrize("data_input", [False, True])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_compiled_autograd_matches_torch(kind, data_input):
    """The backward pass traced by compiled autograd (torch._dynamo.compiled_autograd) through
    the ops' C++ autograd: gradients of every parameter and of the input as torch's, float64.
    (A C++ autograd Function that marks an output non-differentiable fails compiled autograd's
    internal asserts; the ops' workspace output is left unmarked for that reason.)
    data_input: the input requires no grad and one weight is frozen, so the backward ops are
    asked for only some gradients (None for the rest, in the traced graph too)."""
    from torch._dynamo import compiled_autograd
    from rnn_testutils import make_pair

    ref, new = make_pair(kind, 4, 6, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    if data_input:
        for m in (ref, new):
            m.weight_hh_l0_reverse.requires_grad_(False)

    def grads(model, compiled):
        xi = x.clone().requires_grad_(not data_input)
        y, h = model(xi)
        h = h[0] if isinstance(h, tuple) else h
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum() + h.sum()
        model.zero_grad(set_to_none=True)
        if compiled:
            torch._dynamo.reset()
            with compiled_autograd._enable(torch.compile(backend="eager")):
                loss.backward()
        else:
            loss.backward()
        return [xi.grad] + [p.grad for p in model.parameters()]

    got, want = grads(new, True), grads(ref, False)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        if b is None:  # the input's, or the frozen weight's
            assert a is None
        else:
            torch.testing.assert_close(a, b, atol=1e-9, rtol=0)
    assert (got[0] is None) == data_input


# ================================================================== opcheck of the raw ops


@pytest.mark.parametrize("cell", rnnfast.ops.CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_opcheck_forward(cell, reverse):
    for proj in projections(cell):
        for lengths in (False, True):
            for bias in (False, True):
                for state in (True, False):
                    torch.library.opcheck(torch.ops.rnnfast.layer,
                                          op_args(cell, proj, lengths, reverse, bias=bias,
                                                  state=state))


@pytest.mark.parametrize("cell", rnnfast.ops.CELLS)
def test_opcheck_backward(cell):
    """Every gradient list the op takes: one per state, all None, or empty."""
    for proj in projections(cell):
        for bias in (False, True):
            args = op_args(cell, proj, requires_grad=False, bias=bias)
            out, state_out, ws = torch.ops.rnnfast.layer(*args)
            _, x, _, weights, lengths, reverse, _ = args
            grads = [torch.randn_like(s) for s in state_out]
            for grad_state in (grads, [None] * len(grads), []):
                call = (cell, torch.randn_like(out), grad_state, x, weights, lengths, ws, reverse)
                grad_input, grad_states, grad_weights = torch.ops.rnnfast.layer_backward(*call)
                assert grad_input.shape == x.shape
                assert [t.shape for t in grad_states] == [s.shape for s in state_out]
                assert [t.shape for t in grad_weights] == [w.shape for w in weights]
                torch.library.opcheck(torch.ops.rnnfast.layer_backward, call)


@pytest.mark.parametrize("training", [False, True])
def test_opcheck_packed(training):
    """A packed [N, I] input (PackedSequence.data order) with its non-increasing lengths."""
    for cell in rnnfast.ops.CELLS:
        _, _, state, weights, _, _, _ = op_args(cell, B=3, requires_grad=training)
        x = torch.randn(7, 4, dtype=torch.float64, requires_grad=training)
        torch.library.opcheck(torch.ops.rnnfast.layer,
                              (cell, x, state, weights, torch.tensor([3, 2, 2]), False, training))


@pytest.mark.parametrize("cell", rnnfast.ops.CELLS)
def test_compile_fullgraph_raw_op(cell):
    """The forward op with its lists, traced whole by torch.compile (aot_eager: the fake
    kernels of both ops give the graph's shapes), against eager: outputs, final states and the
    gradients of the input, the states and every weight."""
    for proj in projections(cell):
        args = op_args(cell, proj)
        _, x, state, weights, lengths, reverse, _ = args

        def f(x, state, weights):
            out, final = rnnfast.ops.layer(cell, x, state, weights, lengths, reverse)
            return out, final

        torch._dynamo.reset()
        results = []
        for fn in (f, torch.compile(f, fullgraph=True, backend="aot_eager")):
            out, final = fn(x, state, weights)
            loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
            loss = loss + sum(s.square().sum() for s in final)
            results.append([out, *final, *torch.autograd.grad(loss, [x, *state, *weights])])
        assert len(results[1]) == len(results[0]) == 1 + 2 * len(state) + 1 + len(weights)
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
