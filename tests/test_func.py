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

import rnnfast
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


# --- lengths under the transforms --------------------------------------------------------------
# ops.layer called directly with lengths: under a transform (grad, vmap, forward AD) it runs
# rnnfast._reference.layer, which must check lengths as the kernels do (csrc/torch/common.h,
# check_args) with the same messages: "rnnfast: ..." there, "rnnfast::layer(gru): ..." from the
# kernels. A padded input [T=4, B=3, I=2]; a packed one of 6 rows ([3, 2, 1]).

_T, _B, _I, _H = 4, 3, 2, 3


def _gru_args(packed, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*((6, _I) if packed else (_T, _B, _I)), dtype=torch.float64, generator=g)
    w = [torch.randn(3 * _H, n, dtype=torch.float64, generator=g) for n in (_I, _H)]
    return x, w


_BAD_LENGTHS = {
    "padded-float": (False, torch.tensor([4., 2, 1]),
                     r"lengths must be a 1-D int64 CPU tensor of size 3, got Float \[3\] on cpu"),
    "padded-int32": (False, torch.tensor([4, 2, 1], dtype=torch.int32),
                     r"lengths must be a 1-D int64 CPU tensor of size 3, got Int \[3\] on cpu"),
    "padded-2d": (False, torch.tensor([[4, 2, 1]]),
                  r"lengths must be a 1-D int64 CPU tensor of size 3, got Long \[1, 3\] on cpu"),
    "padded-wrong-size": (False, torch.tensor([4, 2]),
                          r"lengths must be a 1-D int64 CPU tensor of size 3, got Long \[2\] "
                          r"on cpu"),
    "padded-above-T": (False, torch.tensor([5, 2, 1]),
                       r"lengths must lie in \[0, 4\], got values in \[1, 5\]"),
    "padded-negative": (False, torch.tensor([4, -1, 1]),
                        r"lengths must lie in \[0, 4\], got values in \[-1, 4\]"),
    "packed-float": (True, torch.tensor([3., 2, 1]),
                     r"lengths must be a 1-D int64 CPU tensor, got Float \[3\] on cpu"),
    "packed-2d": (True, torch.tensor([[3, 2, 1]]),
                  r"lengths must be a 1-D int64 CPU tensor, got Long \[1, 3\] on cpu"),
    "packed-increasing": (True, torch.tensor([2, 3, 1]),
                          r"with a packed 2-D input, lengths must be non-negative and "
                          r"non-increasing, got \[3\] with lengths\[1\] = 3"),
    "packed-negative": (True, torch.tensor([3, 2, -1]),
                        r"with a packed 2-D input, lengths must be non-negative and "
                        r"non-increasing, got \[3\] with lengths\[2\] = -1"),
    "packed-sum-short": (True, torch.tensor([3, 2, 0]),
                         r"a packed 2-D input has one row per active step, sum\(lengths\) = 5, "
                         r"but it has 6 rows"),
    "packed-sum-over": (True, torch.tensor([3, 3, 1]),
                        r"a packed 2-D input has one row per active step, but lengths add up "
                        r"to more than its 6 rows"),
}


def _run_layer(route, x, w, lengths):
    """ops.layer("gru", ...) over x on one route: the kernels ("kernel"), or under a transform
    (the reference loop): torch.func.grad, vmap over a batch of inputs (lengths not vmapped,
    or "vmap-lengths": vmapped along, padded input only), per-sample grads vmap(grad) with
    lengths vmapped along ("vmap-grad-lengths", padded only), forward-mode AD."""
    def out(xx, ll=lengths):
        return rnnfast.ops.layer("gru", xx, [], w, ll)[0]

    if route == "kernel":
        return out(x)
    if route == "grad":
        return grad(lambda xx: out(xx).square().sum())(x)
    if route == "vmap":
        return vmap(out)(torch.stack([x, 2 * x]))
    if route == "vmap-lengths":
        return vmap(out)(torch.stack([x, 2 * x]), torch.stack([lengths, lengths]))
    if route == "vmap-grad-lengths":
        return vmap(grad(lambda xx, ll: out(xx, ll).square().sum()))(
            torch.stack([x, 2 * x]), torch.stack([lengths, lengths]))
    assert route == "forward_ad"
    with fwAD.dual_level():
        return fwAD.unpack_dual(out(fwAD.make_dual(x, torch.ones_like(x)))).tangent


@pytest.mark.parametrize("case, route", [
    (case, route) for case, (packed, _, _) in _BAD_LENGTHS.items()
    for route in ["kernel", "grad", "vmap", "forward_ad"]
    + ([] if packed else ["vmap-lengths", "vmap-grad-lengths"])])
def test_bad_lengths_raise_the_kernels_errors_under_transforms(case, route):
    """Bad lengths (wrong dtype, rank or size; values outside [0, T]; packed: negative,
    increasing or not summing to the rows) raise the same RuntimeError on the kernels' route
    and under torch.func.grad, vmap, vmap(grad) and forward-mode AD (rnnfast._reference.layer),
    not a wrong result or another error."""
    packed, lengths, message = _BAD_LENGTHS[case]
    x, w = _gru_args(packed)
    prefix = r"^rnnfast::layer\(gru\): " if route == "kernel" else r"^rnnfast: "
    with pytest.raises(RuntimeError, match=prefix + message):
        _run_layer(route, x, w, lengths)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_valid_lengths_under_transforms_match_the_kernels(packed):
    """Valid lengths (padded: unsorted, with a 0; packed: [3, 2, 1]) pass the checks under
    every transform, with the kernels' results: grad (and padded, per-sample vmap(grad) with
    lengths vmapped along) against torch.autograd on the kernels, vmap (padded: lengths
    vmapped along too) and forward AD's primal against the kernels' outputs."""
    lengths = torch.tensor([3, 2, 1]) if packed else torch.tensor([2, 4, 0])
    x, w = _gru_args(packed)
    y = _run_layer("kernel", x, w, lengths)

    def kernel_grad(xx):
        leaf = xx.clone().requires_grad_()
        loss = rnnfast.ops.layer("gru", leaf, [], w, lengths)[0].square().sum()
        return torch.autograd.grad(loss, leaf)[0]

    torch.testing.assert_close(_run_layer("grad", x, w, lengths), kernel_grad(x), **TOL)
    twice = torch.stack([y, _run_layer("kernel", 2 * x, w, lengths)])
    torch.testing.assert_close(_run_layer("vmap", x, w, lengths), twice, **TOL)
    if not packed:
        torch.testing.assert_close(_run_layer("vmap-lengths", x, w, lengths), twice, **TOL)
        torch.testing.assert_close(_run_layer("vmap-grad-lengths", x, w, lengths),
                                   torch.stack([kernel_grad(x), kernel_grad(2 * x)]), **TOL)
    with fwAD.dual_level():
        dual = rnnfast.ops.layer("gru", fwAD.make_dual(x, torch.ones_like(x)), [], w, lengths)[0]
        torch.testing.assert_close(fwAD.unpack_dual(dual).primal, y, **TOL)


@pytest.mark.parametrize("mode", ["real", "fake"])
def test_lengths_checks_let_tracers_through(mode):
    """Tracing a transform of ops.layer with padded lengths (make_fx over grad, real and fake
    tensors) still works: the value checks are skipped while a tracer runs the call, which has
    no values to read, and the traced graph computes the eager gradient."""
    from torch.fx.experimental.proxy_tensor import make_fx
    x, w = _gru_args(False)
    lengths = torch.tensor([4, 2, 1])

    def loss(xx, w_ih, w_hh, ll):
        return rnnfast.ops.layer("gru", xx, [], [w_ih, w_hh], ll)[0].square().sum()

    traced = make_fx(grad(loss), tracing_mode=mode)(x, *w, lengths)
    torch.testing.assert_close(traced(x, *w, lengths), grad(loss)(x, *w, lengths), **TOL)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_lengths_checks_under_functionalize(packed):
    """Under torch.func.functionalize the lengths' values are read through its wrapper: valid
    lengths give the kernels' output, a bad one the kernels' message."""
    x, w = _gru_args(packed)
    good, bad, message = ((torch.tensor([3, 2, 1]), torch.tensor([3, 3, 1]), "add up to more")
                          if packed else
                          (torch.tensor([4, 2, 1]), torch.tensor([5, 2, 1]), r"lie in \[0, 4\]"))

    def run(ll):
        return rnnfast.ops.layer("gru", x, [], w, ll)[0]

    torch.testing.assert_close(torch.func.functionalize(run)(good), run(good), **TOL)
    with pytest.raises(RuntimeError, match="^rnnfast: .*" + message):
        torch.func.functionalize(run)(bad)


def test_vmap_over_packed_lengths_is_refused_clearly():
    """The lengths of a packed input say which rows the input has: they cannot differ per
    sample of a vmap, and saying so beats an error about storage."""
    x, w = _gru_args(True)
    lengths = torch.tensor([3, 2, 1])
    with pytest.raises(RuntimeError, match="lengths of a packed 2-D input cannot be batched"):
        vmap(lambda xx, ll: rnnfast.ops.layer("gru", xx, [], w, ll)[0])(
            torch.stack([x, x]), torch.stack([lengths, lengths]))
