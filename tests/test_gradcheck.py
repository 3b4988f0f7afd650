"""torch.autograd.gradcheck (float64, tiny shapes) through the rnnfast modules."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from rnn_testutils import KIND_NAMES, hx_shapes, is_lstm, make_pair, randn

T, B, I, H = 3, 2, 3, 2
GC = dict(eps=1e-6, atol=1e-6, rtol=1e-4)


def _module_fn(m, lstm, packed_lengths=None, enforce_sorted=True):
    def f(x, h0, c0=None):
        inp = x
        if packed_lengths is not None:
            inp = pack_padded_sequence(x, torch.tensor(packed_lengths),
                                       enforce_sorted=enforce_sorted)
        out, hn = m(inp, (h0, c0) if lstm else h0)
        if packed_lengths is not None:
            out = out.data
        if lstm:
            return out, hn[0], hn[1]
        return out, hn
    return f


def _inputs(kind, layers, bidir, proj=0, batch=B):
    hs, cs = hx_shapes(kind, layers, bidir, batch, H, proj)
    inputs = [randn(T, batch, I, seed=1).requires_grad_(), randn(*hs, seed=2).requires_grad_()]
    if cs is not None:
        inputs.append(randn(*cs, seed=3).requires_grad_())
    return tuple(inputs)


@pytest.mark.parametrize("kind", KIND_NAMES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradcheck_bidirectional_two_layers(kind, mode):
    _, m = make_pair(kind, I, H, num_layers=2, bidirectional=True)
    m.train(mode == "train")
    assert torch.autograd.gradcheck(_module_fn(m, is_lstm(kind)), _inputs(kind, 2, True), **GC)


@pytest.mark.parametrize("bidir", [False, True])
def test_gradcheck_lstm_proj(bidir):
    _, m = make_pair("LSTM", I, H + 1, num_layers=2, bidirectional=bidir, proj_size=1)
    hs, cs = hx_shapes("LSTM", 2, bidir, B, H + 1, 1)
    inputs = (randn(T, B, I, seed=1).requires_grad_(), randn(*hs, seed=2).requires_grad_(),
              randn(*cs, seed=3).requires_grad_())
    assert torch.autograd.gradcheck(_module_fn(m, True), inputs, **GC)


@pytest.mark.parametrize("kind", KIND_NAMES)
@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
def test_gradcheck_packed(kind, enforce_sorted):
    lengths = [3, 2, 1] if enforce_sorted else [2, 3, 1]
    _, m = make_pair(kind, I, H, num_layers=2, bidirectional=True)
    f = _module_fn(m, is_lstm(kind), lengths, enforce_sorted)
    assert torch.autograd.gradcheck(f, _inputs(kind, 2, True, batch=3), **GC)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_gradcheck_parameters_via_functional_call(kind):
    """Numerical check of the parameter gradients too (1 layer, bidirectional)."""
    lstm = is_lstm(kind)
    _, m = make_pair(kind, I, H, bidirectional=True)
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in m.parameters())
    x = randn(T, B, I, seed=1).requires_grad_()

    def f(x, *ps):
        out, hn = torch.func.functional_call(m, dict(zip(names, ps)), (x,))
        return (out, *hn) if lstm else (out, hn)

    assert torch.autograd.gradcheck(f, (x, *params), **GC)
