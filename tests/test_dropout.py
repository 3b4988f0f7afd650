"""Inter-layer dropout in train mode (never compared to torch's own mask)."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from rnn_testutils import (ATOL, KIND_NAMES, call_dense, compare_modules, is_lstm, make_pair,
                           randn)

T, B, I, H = 5, 3, 4, 6


def _run(m, x, seed=None):
    if seed is not None:
        torch.manual_seed(seed)
    out, hn = m(x)
    h = hn[0] if isinstance(hn, tuple) else hn
    return out, h


@pytest.mark.parametrize("kind", KIND_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_dropout_train_differs_reproducible_backward(kind, dtype):
    _, m = make_pair(kind, I, H, num_layers=2, dropout=0.5, bidirectional=True, dtype=dtype)
    x = randn(T, B, I, dtype=dtype).requires_grad_()

    m.eval()
    out_eval, h_eval = _run(m, x)
    m.train()
    out_a, h_a = _run(m, x, seed=123)
    out_b, h_b = _run(m, x, seed=123)
    out_c, _ = _run(m, x, seed=456)

    assert not torch.allclose(out_a, out_eval), "dropout had no effect in train mode"
    assert torch.equal(out_a, out_b), "dropout not reproducible under torch.manual_seed"
    assert torch.equal(h_a, h_b)
    assert not torch.equal(out_a, out_c), "different seeds gave the same dropout mask"
    # the first layer's final state (layers 0, both directions) is upstream of any dropout
    torch.testing.assert_close(h_a[:2], h_eval[:2], atol=ATOL[dtype], rtol=0)

    loss = (out_a * randn(*out_a.shape, dtype=dtype, seed=7)).sum() + h_a.sum()
    grads = torch.autograd.grad(loss, [x, *m.parameters()])
    for g in grads:
        assert g is not None and torch.isfinite(g).all()
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_dropout_one_zeroes_inter_layer_input(kind):
    """dropout=1.0 zeroes every inter-layer activation: the mask is deterministic, so the result
    must match torch exactly (and must not be NaN from a 1/(1-p) scale)."""
    ref, new = make_pair(kind, I, H, num_layers=2, dropout=1.0)
    ref.train()
    new.train()
    leaves = {"x": randn(T, B, I)}
    compare_modules(kind, ref, new, leaves, call_dense(is_lstm(kind)), torch.float64,
                    what=f"{kind} dropout=1")


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_dropout_packed_train(kind):
    _, m = make_pair(kind, I, H, num_layers=2, dropout=0.3, batch_first=True)
    m.train()
    x = randn(B, T, I).requires_grad_()
    torch.manual_seed(0)
    packed = pack_padded_sequence(x, torch.tensor([2, 5, 1]), batch_first=True,
                                  enforce_sorted=False)
    out, _ = m(packed)
    torch.manual_seed(0)
    out2, _ = m(pack_padded_sequence(x, torch.tensor([2, 5, 1]), batch_first=True,
                                     enforce_sorted=False))
    assert torch.equal(out.data, out2.data)
    out.data.sum().backward()
    assert torch.isfinite(x.grad).all()
    # padded positions receive no gradient
    assert (x.grad[0, 2:] == 0).all() and (x.grad[2, 1:] == 0).all()


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_dropout_changed_at_runtime(kind):
    """module.dropout is read at forward time, like torch."""
    ref, new = make_pair(kind, I, H, num_layers=2, dropout=0.0)
    new.train()
    x = randn(T, B, I)
    base, _ = _run(new, x)
    new.dropout = 0.6
    dropped, _ = _run(new, x, seed=0)
    assert not torch.allclose(dropped, base), "raising module.dropout at run time was ignored"
    new.dropout = 0.0
    again, _ = _run(new, x)
    expected, _ = _run(ref, x)
    torch.testing.assert_close(again, expected, atol=1e-9, rtol=0)

    # and the other way round: built with dropout, set to 0 -> equals torch without dropout
    ref2, new2 = make_pair(kind, I, H, num_layers=2, dropout=0.5)
    new2.train()
    ref2.train()
    new2.dropout = 0.0
    ref2.dropout = 0.0
    torch.testing.assert_close(_run(new2, x)[0], _run(ref2, x)[0], atol=1e-9, rtol=0)
