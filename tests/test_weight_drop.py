"""DropConnect on the recurrent weights (``weight_drop=p``; Merity et al. 2017, AWD-LSTM), on
rnnfast.LSTM, GRU and RNN.

In training each forward call drops W_hh of every layer and direction with inverted dropout,
one mask per call for all of its steps; in eval W_hh is used as is. The oracle is torch's own
module called with W_hh replaced by ``F.dropout(W_hh, p)`` drawn from the same RNG state, in
the same (layer, direction) order: outputs, final states and the gradients of the input, the
initial states and every parameter (W_hh's through the mask) must agree in float64.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import rnnfast
from rnn_testutils import randn

MODULES = [("LSTM", {}), ("LSTM", {"proj_size": 3}), ("GRU", {}),
           ("RNN", {"nonlinearity": "relu"})]


def _pair(name, kw, p, **extra):
    torch.manual_seed(0)
    args = dict(input_size=4, hidden_size=6, num_layers=2, bidirectional=True,
                dtype=torch.float64, **kw, **extra)
    new = getattr(rnnfast, name)(**args, weight_drop=p)
    ref = getattr(nn, name)(**args)
    ref.load_state_dict(new.state_dict(), strict=True)
    return new, ref


def _dropped_call(ref, p, x, hx):
    """torch's module on x with each weight_hh dropped as rnnfast draws it (inverted dropout,
    one draw per layer and direction, in parameter order)."""
    params = dict(ref.named_parameters())
    for name in params:
        if name.startswith("weight_hh"):
            params[name] = F.dropout(params[name], p, True)
    return torch.func.functional_call(ref, params, (x, hx))


@pytest.mark.parametrize("name,kw", MODULES, ids=lambda v: v if isinstance(v, str) else
                         "-".join(f"{k}={x}" for k, x in v.items()) or "plain")
def test_training_drops_w_hh_once_per_call(name, kw):
    p = 0.4
    new, ref = _pair(name, kw, p)
    new.train()
    x = randn(7, 3, 4, seed=1).requires_grad_()
    S = kw.get("proj_size", 0) or 6
    h0 = randn(4, 3, S, seed=2).requires_grad_()
    hx = (h0, randn(4, 3, 6, seed=3).requires_grad_()) if name == "LSTM" else h0
    states = list(hx) if name == "LSTM" else [hx]

    def loss(out, hn):
        hn = hn if isinstance(hn, tuple) else (hn,)
        return (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum() + \
            sum(h.pow(2).sum() for h in hn)

    torch.manual_seed(5)
    out, hn = new(x, hx)
    got = torch.autograd.grad(loss(out, hn), [x] + states + list(new.parameters()))
    torch.manual_seed(5)
    out_r, hn_r = _dropped_call(ref, p, x, hx)
    want = torch.autograd.grad(loss(out_r, hn_r), [x] + states + list(ref.parameters()))
    torch.testing.assert_close(out, out_r, atol=1e-9, rtol=0)
    names = ["x"] + [f"state{k}" for k in range(len(states))] + [n for n, _ in
                                                                  new.named_parameters()]
    for n, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0, msg=lambda m: f"{n}: {m}")
    # the mask zeroes about p of W_hh's gradient (the rows W_hh gets none from are the mask's)
    g_hh = got[names.index("weight_hh_l0")]
    assert 0.2 < (g_hh == 0).double().mean().item() < 0.6
    # another call draws another mask
    out2, _ = new(x, hx)
    assert not torch.allclose(out, out2)


@pytest.mark.parametrize("name,kw", MODULES[:1] + MODULES[2:], ids=lambda v: str(v))
def test_eval_uses_w_hh_as_is_and_state_dict_is_torchs(name, kw):
    new, ref = _pair(name, kw, 0.5)
    assert list(new.state_dict()) == list(ref.state_dict())
    assert "weight_drop=0.5" in repr(new)
    new.eval()
    x = randn(5, 2, 4, seed=4)
    out, _ = new(x)
    out_r, _ = ref(x)
    torch.testing.assert_close(out, out_r, atol=1e-12, rtol=0)
    # weight_drop=0 leaves training untouched: no RNG draw, torch's result
    plain, ref = _pair(name, kw, 0.0)
    plain.train()
    state = torch.random.get_rng_state()
    out, _ = plain(x)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.testing.assert_close(out, ref(x)[0], atol=1e-12, rtol=0)
    assert "weight_drop" not in repr(plain)


@pytest.mark.parametrize("bad", [1.0, -0.1, "0.3", True, None])
def test_bad_weight_drop(bad):
    with pytest.raises(ValueError, match="weight_drop"):
        rnnfast.LSTM(4, 5, weight_drop=bad)
    with pytest.raises(ValueError, match="weight_drop"):
        rnnfast.GRU(4, 5, weight_drop=bad)
