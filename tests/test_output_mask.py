"""The backward ops' output_mask: a gradient not asked for is not computed and comes back None,
the ones asked for are the same bits as a call that computes them all; autograd asks only for
the gradients of what requires grad (an input that is data, initial states not given or not
requiring grad, frozen weights), and those gradients still match torch's."""
import itertools

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import rnnfast
from rnnfast import _cells
from rnnfast.ops import CELLS
from rnn_testutils import SIMD_PATHS, make_pair, op_args, projections, simd_path


def _flat(grads):
    """(grad_input, grad_state, grad_weights, ...) as one list."""
    out = [grads[0]]
    for part in grads[1:]:
        out += list(part)
    return out


def _masks(n):
    """All true, all false, each entry alone false, each alone true."""
    yield [True] * n
    yield [False] * n
    for i in range(n):
        yield [j != i for j in range(n)]
        yield [j == i for j in range(n)]


def _check(got, full, mask, what):
    assert len(got) == len(full) == len(mask), what
    for i, (g, f, m) in enumerate(zip(got, full, mask)):
        if m:
            assert g is not None and torch.equal(g, f), f"{what}: gradient {i} differs"
        else:
            assert g is None, f"{what}: gradient {i} was not asked for but came back"


def _zoneout_masks(cell, x, state):
    """One keep mask per state, shaped like the state's rows over the steps."""
    g = torch.Generator().manual_seed(7)
    return [torch.bernoulli(torch.full((x.shape[0],) + tuple(t.shape), 0.3,
                                       dtype=x.dtype), generator=g) for t in state]


# (proj, lengths, reverse, layout): every combination of the first three dense, and packed
# (2-D input rows, with lengths) and zoneout cases
def _layouts(cell):
    for proj, lengths, reverse in itertools.product(projections(cell), (False, True),
                                                    (False, True)):
        yield proj, lengths, reverse, "dense"
    yield 0, True, False, "packed"
    yield 0, True, True, "zoneout"


@pytest.mark.parametrize("cell", CELLS)
def test_layer_backward_mask(cell):
    for simd, (proj, lengths, reverse, layout) in itertools.product(SIMD_PATHS,
                                                                    list(_layouts(cell))):
        args = list(op_args(cell, proj=proj, lengths=lengths, reverse=reverse,
                            requires_grad=False))
        _, x, state, weights, L, _, _ = args
        if layout == "packed":  # the active rows, [sum(lengths), I]
            x = args[1] = torch.randn(int(L.sum()), x.shape[2], dtype=x.dtype)
        zoneout = _zoneout_masks(cell, x, state) if layout == "zoneout" else None
        with simd_path(simd):
            y, s, ws = torch.ops.rnnfast.layer(*args, zoneout)
            gy = torch.randn_like(y)
            gs = [torch.randn_like(t) for t in s]
            call = (cell, gy, gs, x, weights, L, ws, reverse, zoneout)
            full = _flat(torch.ops.rnnfast.layer_backward(*call))
            assert all(g is not None for g in full)
            for mask in _masks(len(full)):
                got = _flat(torch.ops.rnnfast.layer_backward(*call, mask))
                _check(got, full, mask, f"{simd} proj={proj} lengths={lengths} "
                                        f"reverse={reverse} {layout} mask={mask}")


@pytest.mark.parametrize("cell,proj", [("lstm", 0), ("lstm", 3), ("gru", 0),
                                       ("lstm_peephole", 0)])
def test_bidirectional_layer_backward_mask(cell, proj):
    for simd, lengths in itertools.product(SIMD_PATHS, (False, True)):
        _, x, state, weights, L, _, _ = op_args(cell, proj=proj, lengths=lengths,
                                                requires_grad=False)
        _, _, state_r, weights_r, _, _, _ = op_args(cell, proj=proj, lengths=lengths, seed=1,
                                                    requires_grad=False)
        with simd_path(simd):
            y, s, ws, y_r, s_r, ws_r = torch.ops.rnnfast.bidirectional_layer(
                cell, x, state, state_r, weights, weights_r, L, True)
            call = (cell, torch.randn_like(y), [torch.randn_like(t) for t in s],
                    torch.randn_like(y_r), [torch.randn_like(t) for t in s_r], x, weights,
                    weights_r, L, ws, ws_r, None, None)
            full = _flat(torch.ops.rnnfast.bidirectional_layer_backward(*call))
            for mask in _masks(len(full)):
                got = _flat(torch.ops.rnnfast.bidirectional_layer_backward(*call, mask))
                _check(got, full, mask, f"{simd} lengths={lengths} mask={mask}")


def test_mask_of_the_wrong_length_is_a_value_error():
    args = op_args("lstm", requires_grad=False)
    _, x, state, weights, L, reverse, _ = args
    y, s, ws = torch.ops.rnnfast.layer(*args)
    msg = (r"rnnfast::layer_backward\(lstm\): output_mask must be None or hold 7 bools "
           r"\(grad_input, 2 for grad_state, 4 for grad_weights\), got 3")
    with pytest.raises(ValueError, match=msg):
        torch.ops.rnnfast.layer_backward("lstm", y, s, x, weights, L, ws, reverse, None,
                                         [True] * 3)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode(allow_non_fake_inputs=True), pytest.raises(ValueError, match=msg):
        torch.ops.rnnfast.layer_backward("lstm", y, s, x, weights, L, ws, reverse, None,
                                         [True] * 3)
    out = torch.ops.rnnfast.bidirectional_layer("lstm", x, state, state, weights, weights, L,
                                                True)
    msg = (r"bidirectional_layer_backward\(lstm\): output_mask must be None or hold 13 bools "
           r"\(grad_input, 2 for grad_state, 4 for grad_weights, 2 for grad_state_reverse, 4 "
           r"for grad_weights_reverse\), got 7")
    call = ("lstm", out[0], [], out[3], [], x, weights, weights, L, out[2], out[5], None, None,
            [True] * 7)
    with pytest.raises(ValueError, match=msg):
        torch.ops.rnnfast.bidirectional_layer_backward(*call)
    with FakeTensorMode(allow_non_fake_inputs=True), pytest.raises(ValueError, match=msg):
        torch.ops.rnnfast.bidirectional_layer_backward(*call)


def test_opcheck_with_a_mask():
    """The fake kernels give None where the kernels do (torch.library.opcheck)."""
    args = op_args("lstm", proj=3, requires_grad=False)
    _, x, state, weights, L, reverse, _ = args
    y, s, ws = torch.ops.rnnfast.layer(*args)
    n = 1 + 2 + len(weights)
    for mask in ([False] * n, [i % 2 == 0 for i in range(n)]):
        torch.library.opcheck(torch.ops.rnnfast.layer_backward,
                              ("lstm", y, s, x, weights, L, ws, reverse, None, mask))
    out = torch.ops.rnnfast.bidirectional_layer("lstm", x, state, state, weights, weights, L,
                                                True)
    mask = [i % 3 != 1 for i in range(1 + 2 * n - 2)]
    torch.library.opcheck(torch.ops.rnnfast.bidirectional_layer_backward,
                          ("lstm", out[0], list(out[1]), out[3], list(out[4]), x, weights,
                           weights, L, out[2], out[5], None, None, mask))


class _Masks(TorchDispatchMode):
    """Records the output_mask of each backward op call (None where not passed)."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in ("layer_backward", "bidirectional_layer_backward"):
            mask = kwargs.get("output_mask")
            if mask is None:
                mask = args[9] if name == "layer_backward" and len(args) > 9 else \
                    args[13] if len(args) > 13 else None
            self.masks.append((name, None if mask is None else list(mask)))
        return func(*args, **kwargs)


def _grads(module, x, hx, targets):
    out, state = module(x, hx) if hx is not None else module(x)
    loss = out.square().sum() + sum(t.sum() for t in (state if isinstance(state, tuple)
                                                      else (state,)))
    return torch.autograd.grad(loss, targets)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_TANH"])
def test_autograd_asks_only_for_what_requires_grad(kind):
    """Input as data, no initial state, a frozen weight: the mask leaves those out, and the
    gradients that are computed equal torch's (float64)."""
    ref, new = make_pair(kind, 4, 5, num_layers=2, seed=0)
    for m in (ref, new):
        m.weight_hh_l1.requires_grad_(False)
    x = torch.randn(6, 3, 4, dtype=torch.float64)  # data: no gradient wanted
    targets = [p for p in new.parameters() if p.requires_grad]
    with _Masks() as rec:
        got = _grads(new, x, None, targets)
    want = _grads(ref, x, None, [p for p in ref.parameters() if p.requires_grad])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=0)
    states = 2 if kind == "LSTM" else 1
    # one call per layer, last layer first: its input (layer 0's output) needs a gradient;
    # layer 0's (the data) does not; no states were given; weight_hh_l1 is frozen
    assert rec.masks == [
        ("layer_backward", [True] + [False] * states + [True, False, True, True]),
        ("layer_backward", [False] + [False] * states + [True] * 4)]


def test_states_that_require_grad_get_it_and_others_do_not():
    ref, new = make_pair("LSTM", 4, 5, seed=1)
    x = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 3, 5, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(1, 3, 5, dtype=torch.float64)  # a constant
    with _Masks() as rec:
        got = _grads(new, x, (h0, c0), [x, h0] + list(new.parameters()))
    want = _grads(ref, x, (h0, c0), [x, h0] + list(ref.parameters()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=0)
    assert rec.masks == [("layer_backward", [True, True, False] + [True] * 4)]


def test_bidirectional_mask_and_gradients():
    ref, new = make_pair("GRU", 4, 5, bidirectional=True, seed=2)
    for m in (ref, new):
        m.bias_ih_l0_reverse.requires_grad_(False)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    h0 = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    targets = [h0] + [p for p in new.parameters() if p.requires_grad]
    with _Masks() as rec:
        got = _grads(new, x, h0, targets)
    want = _grads(ref, x, h0, [h0] + [p for p in ref.parameters() if p.requires_grad])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=0)
    assert rec.masks == [("bidirectional_layer_backward",
                          [False, True] + [True] * 4 + [True] + [True, True, False, True])]


def test_cell_with_constant_state():
    """A cell step whose hx is a constant (the first step of a loop): no dh0 GEMM, the same
    weight gradients as torch's."""
    ref, new = make_pair("LSTMCell", 4, 5, seed=3)
    x = torch.randn(3, 4, dtype=torch.float64)
    hx = (torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64))
    with _Masks() as rec:
        h, c = new(x, hx)
        got = torch.autograd.grad(h.sum() + c.square().sum(), list(new.parameters()))
    h, c = ref(x, hx)
    want = torch.autograd.grad(h.sum() + c.square().sum(), list(ref.parameters()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=0)
    assert rec.masks == [("layer_backward", [False, False, False] + [True] * 4)]


def test_packed_input_without_gradient():
    ref, new = make_pair("LSTM", 4, 5, seed=4)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    results = []
    for m in (new, ref):
        packed = nn.utils.rnn.pack_padded_sequence(x, [6, 4, 2])
        out, (h, c) = m(packed)
        loss = out.data.square().sum() + h.sum() + c.sum()
        results.append(torch.autograd.grad(loss, list(m.parameters())))
    for g, w in zip(*results):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=0)


def test_pair_states_given_in_one_direction_only():
    """The pair's mask positions: no states forward, h constant and c requiring grad in
    reverse, a frozen weight in each direction; gradients == two layer calls'."""
    _, x, _, weights, L, _, _ = op_args("lstm", requires_grad=False)
    _, _, (h_r, c_r), weights_r, _, _, _ = op_args("lstm", seed=1, requires_grad=False)
    x.requires_grad_(True)
    c_r.requires_grad_(True)
    for i, w in enumerate(weights):
        w.requires_grad_(i != 1)
    for i, w in enumerate(weights_r):
        w.requires_grad_(i != 2)
    targets = [x, c_r] + [w for w in weights + weights_r if w.requires_grad]

    def loss(outs):
        return sum((o * (k + 1)).sum() for k, (y, s) in enumerate(outs) for o in [y] + s)

    with _Masks() as rec:
        got = torch.autograd.grad(loss(rnnfast.ops.bidirectional_layer(
            "lstm", x, [], [h_r, c_r], weights, weights_r, L)), targets)
    assert rec.masks == [("bidirectional_layer_backward",
                          [True, False, False, True, False, True, True, False, True,
                           True, True, False, True])]
    want = torch.autograd.grad(loss([rnnfast.ops.layer("lstm", x, [], weights, L),
                                     rnnfast.ops.layer("lstm", x, [h_r, c_r], weights_r, L,
                                                       reverse=True)]), targets)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_only_the_gradients_asked_for():
    """autograd.grad(loss, [x]) with trainable weights: only grad_input is computed."""
    ref, new = make_pair("LSTM", 4, 5, seed=5)
    x = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
    with _Masks() as rec:
        got, = torch.autograd.grad(new(x)[0].square().sum(), [x])
    want, = torch.autograd.grad(ref(x)[0].square().sum(), [x])
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    assert rec.masks == [("layer_backward", [True] + [False] * 6)]
    for p in new.parameters():
        assert p.grad is None


def test_backward_op_outputs_are_not_differentiable():
    """The backward ops' outputs, masked or not, raise when differentiated (both ops); with
    grad mode off they carry no graph."""
    args = op_args("lstm", requires_grad=False)
    _, x, state, weights, L, reverse, _ = args
    y, s, ws = torch.ops.rnnfast.layer(*args)
    gy = torch.randn_like(y, requires_grad=True)
    gi, gs, gw = torch.ops.rnnfast.layer_backward("lstm", gy, [], x, weights, L, ws, reverse,
                                                  None, [False, True, False, True, False,
                                                                    True, True])
    assert gi is None and gs[1] is None and gw[1] is None
    for g in [gs[0], gw[0], gw[2], gw[3]]:
        with pytest.raises(RuntimeError, match="not implemented"):
            g.sum().backward(retain_graph=True)
    with torch.no_grad():
        gi, gs, gw = torch.ops.rnnfast.layer_backward("lstm", gy, [], x, weights, L, ws,
                                                      reverse)
    assert not any(g.requires_grad for g in [gi, *gs, *gw])
    out = torch.ops.rnnfast.bidirectional_layer("lstm", x, state, state, weights, weights, L,
                                                True)
    grads = torch.ops.rnnfast.bidirectional_layer_backward(
        "lstm", gy, [], out[3], [], x, weights, weights, L, out[2], out[5])
    for g in _flat(grads):
        with pytest.raises(RuntimeError, match="not implemented"):
            g.sum().backward(retain_graph=True)
