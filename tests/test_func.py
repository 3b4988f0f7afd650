"""torch.func transforms over rnnfast modules (issue 14, item 2).

Under a functorch transform or forward-mode AD the layers run as rnnfast._reference's
differentiable loop (the fused ops' C++ autograd cannot take part), so grad, vjp, jacrev,
jacfwd, hessian, vmap and forward AD work. Oracle: torch.nn in float64 with the same
parameters. torch's own nn.LSTM/GRU/RNN refuse vmap ("Batching rule not implemented for
aten::lstm"), so vmap is compared with a Python loop over torch.nn.
"""
from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, vjp, vmap
from torch.nn.utils.rnn import pack_padded_sequence

from rnn_testutils import CELL_KIND_NAMES, KIND_NAMES, make_pair

ALL_KINDS = KIND_NAMES + CELL_KIND_NAMES
TOL = dict(atol=1e-10, rtol=0)


def _pair(kind):
    kw = dict(num_layers=2, bidirectional=True) if kind in KIND_NAMES else {}
    if kind == "LSTM":
        kw["proj_size"] = 2
    return make_pair(kind, 2, 3, **kw)


def _input(kind, batch=2):
    shape = (3, batch, 2) if kind in KIND_NAMES else (batch, 2)
    return torch.randn(*shape, dtype=torch.float64)


def _out(r):
    return r[0] if isinstance(r, tuple) else r


def _loss(module):
    def f(params, x):
        y = _out(functional_call(module, params, (x,)))
        return (y.sin() * y).sum()
    return f


def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _flat(tree):
    if isinstance(tree, dict):
        return torch.cat([_flat(v) for _, v in sorted(tree.items())])
    if isinstance(tree, (tuple, list)):
        return torch.cat([_flat(v) for v in tree])
    return tree.flatten()


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_grad_and_vjp_match_torch(kind):
    ref, new = _pair(kind)
    x, p = _input(kind), _params(ref)
    for argnums in (0, 1):
        want = grad(_loss(ref), argnums=argnums)(p, x)
        got = grad(_loss(new), argnums=argnums)(p, x)
        torch.testing.assert_close(_flat(got), _flat(want), **TOL)
    v_ref = vjp(lambda xx: _out(functional_call(ref, p, (xx,))), x)
    v_new = vjp(lambda xx: _out(functional_call(new, p, (xx,))), x)
    torch.testing.assert_close(v_new[0], v_ref[0], **TOL)
    ct = torch.randn_like(v_ref[0])
    torch.testing.assert_close(v_new[1](ct)[0], v_ref[1](ct)[0], **TOL)
    assert _flat(want).abs().max() > 1e-6


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_jacrev_jacfwd_match_torch(kind):
    ref, new = _pair(kind)
    x, p = _input(kind), _params(ref)

    def out_of(module):
        return lambda pp, xx: _out(functional_call(module, pp, (xx,)))

    for transform in (jacrev, jacfwd):
        want = transform(out_of(ref), argnums=(0, 1))(p, x)
        got = transform(out_of(new), argnums=(0, 1))(p, x)
        torch.testing.assert_close(_flat(got[1]), _flat(want[1]), **TOL)
        for name in p:
            torch.testing.assert_close(got[0][name], want[0][name], **TOL, msg=name)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_hessian_matches_torch(kind):
    ref, new = _pair(kind)
    x, p = _input(kind, batch=1), _params(ref)
    want = hessian(_loss(ref), argnums=1)(p, x)
    got = hessian(_loss(new), argnums=1)(p, x)
    torch.testing.assert_close(got, want, **TOL)
    # mixed second derivatives with respect to one weight matrix
    name = "weight_hh_l0" if kind in KIND_NAMES else "weight_hh"

    def by_weight(module):
        return lambda w: _loss(module)({**p, name: w}, x)

    torch.testing.assert_close(hessian(by_weight(new))(p[name]),
                               hessian(by_weight(ref))(p[name]), **TOL)


def test_grad_through_packed_sequence_matches_torch():
    """torch.func.grad over a PackedSequence input. torch's own GRU raises under torch.func
    with packed input ("Cannot access data pointer of Tensor that doesn't have storage"), so
    the oracle is torch.autograd on torch.nn."""
    ref, new = _pair("GRU")
    x, p = _input("GRU", batch=3), _params(ref)

    def loss(module, pp):
        packed = pack_padded_sequence(x, [2, 3, 1], enforce_sorted=False)
        out, h = functional_call(module, pp, (packed,))
        return out.data.square().sum() + h.sum()

    got = grad(lambda pp: loss(new, pp))(p)
    leaves = {n: t.clone().requires_grad_() for n, t in p.items()}
    want = dict(zip(leaves, torch.autograd.grad(loss(ref, leaves), list(leaves.values()))))
    torch.testing.assert_close(_flat(got), _flat(want), **TOL)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "LSTMCell", "RNNCell_RELU"])
def test_vmap_and_per_sample_grads_match_loop_over_torch(kind):
    ref, new = _pair(kind)
    p = _params(ref)
    xs = torch.stack([_input(kind) for _ in range(3)])
    got = vmap(lambda xx: _out(new(xx)))(xs)
    want = torch.stack([_out(ref(xx)) for xx in xs])
    torch.testing.assert_close(got, want, **TOL)
    # per-sample gradients: vmap(grad)
    per = vmap(grad(_loss(new)), in_dims=(None, 0))(p, xs)
    for i, xx in enumerate(xs):
        one = grad(_loss(ref))(p, xx)
        for name in p:
            torch.testing.assert_close(per[name][i], one[name], **TOL, msg=name)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_TANH", "GRUCell"])
def test_forward_mode_ad_matches_torch(kind):
    ref, new = _pair(kind)
    x = _input(kind)
    tangent = torch.randn_like(x)
    with fwAD.dual_level():
        want = fwAD.unpack_dual(_out(ref(fwAD.make_dual(x, tangent)))).tangent
        got = fwAD.unpack_dual(_out(new(fwAD.make_dual(x, tangent)))).tangent
    torch.testing.assert_close(got, want, **TOL)
    assert want.abs().max() > 1e-6
