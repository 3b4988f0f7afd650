"""Both directions of a bidirectional layer in one op (rnnfast::bidirectional_layer; the pair
schedule of csrc/core/rnn.h: layer_forward_pair). On two threads the directions run at the same
time, one core each; on other thread counts one after the other. Either way every result must be
the layer-by-layer computation's (two rnnfast::layer calls) bit for bit: outputs, final states,
and the gradients of the input, the initial states and every parameter, at 1, 2 and 3 threads,
for every cell, dense and packed, with zoneout and a projection. Also: gradients of gradients,
torch.func, the ops' errors and opcheck.
"""
from __future__ import annotations

import pytest
import torch

import rnnfast
from rnnfast import ops
from rnn_testutils import (CELL_MODULES, SIMD_PATHS, call_dense, call_packed, count_calls,
                           fwd_bwd, hx_shapes, op_args, randn, simd_path)


def _sequential(cell, input, state, state_reverse, weights, weights_reverse, lengths=None,
                zoneout=(), zoneout_reverse=()):
    """The layer-by-layer computation the pair op must equal."""
    return (ops.layer(cell, input, state, weights, lengths, False, zoneout),
            ops.layer(cell, input, state_reverse, weights_reverse, lengths, True,
                      zoneout_reverse))


@pytest.fixture
def pair_calls(monkeypatch):
    """Counts the modules' calls of the pair op (which still runs)."""
    return count_calls(monkeypatch, ops, "bidirectional_layer")


def _case(cell, dtype, packed, zoneout, proj):
    """(module, leaves, call): a 2-layer bidirectional module running op cell `cell`."""
    _, fast_name, kw = CELL_MODULES[cell]
    kw = dict(kw, num_layers=2, bidirectional=True)
    if proj:
        kw["proj_size"] = proj
    if zoneout:
        kw["zoneout"] = (0.3, 0.2) if fast_name == "LSTM" else 0.3
    torch.manual_seed(0)
    m = getattr(rnnfast, fast_name)(12, 20, dtype=dtype, **kw)
    lstm = fast_name == "LSTM"
    T, B = 9, 11
    leaves = {"x": randn(T, B, 12, dtype=dtype, seed=1)}
    kind = "LSTM" if lstm else "GRU"
    hs, cs = hx_shapes(kind, 2, True, B, 20, proj)
    leaves["h0"] = randn(*hs, dtype=dtype, seed=2)
    if cs is not None:
        leaves["c0"] = randn(*cs, dtype=dtype, seed=3)
    if packed:
        lengths = [9, 1, 8, 3, 9, 6, 2, 7, 4, 5, 9]  # unsorted: the permutes run too
        call = call_packed(lstm, lengths, False, False)
    else:
        call = call_dense(lstm)
    return m, leaves, call


def _run(m, leaves, call):
    torch.manual_seed(5)  # zoneout's masks
    return fwd_bwd(m, leaves, call, upstream_seed=31)


def _assert_bitwise(a, b, what):
    assert sorted(a) == sorted(b), what
    bad = [k for k in a if isinstance(a[k], torch.Tensor) and not torch.equal(a[k], b[k])]
    bad += [k for k in a if not isinstance(a[k], torch.Tensor) and a[k] != b[k]]
    assert not bad, f"{what}: not bitwise identical in {bad}"


def test_two_threads_take_the_concurrent_schedule():
    """On 2 threads while W_hh fits twice the L2 (the modules' sizes below all do)."""
    l2 = rnnfast._C.l2_cache_bytes()
    assert rnnfast._C.pair_concurrent(2, 2 * l2)
    assert not rnnfast._C.pair_concurrent(2, 2 * l2 + 1)
    assert not rnnfast._C.pair_concurrent(1, 1024)
    assert not rnnfast._C.pair_concurrent(3, 1024)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", list(CELL_MODULES))
def test_pair_equals_layer_by_layer_bitwise(cell, dtype, pair_calls, monkeypatch):
    """Every cell, dense and packed, with and without zoneout (training masks) and, for LSTM,
    a projection: the modules' pair op against two layer calls per layer, at 1, 2, 3 threads."""
    variants = [(False, False, 0), (True, True, 0)]
    if cell == "lstm":
        variants.append((True, False, 7))
    for packed, zoneout, proj in variants:
        m, leaves, call = _case(cell, dtype, packed, zoneout, proj)
        m.train()
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            del pair_calls[:]
            got = _run(m, leaves, call)
            assert len(pair_calls) == 2, "the module should run each layer as one pair op"
            with monkeypatch.context() as mp:
                mp.setattr(ops, "bidirectional_layer", _sequential)
                want = _run(m, leaves, call)
            _assert_bitwise(got, want, f"{cell} {dtype} packed={packed} zoneout={zoneout} "
                                       f"proj={proj} threads={n}")


@pytest.mark.parametrize("simd", SIMD_PATHS)
def test_pair_on_every_simd_path(simd, monkeypatch):
    """The concurrent schedule (2 threads) on each SIMD path this CPU has, LSTM and GRU."""
    torch.set_num_threads(2)
    with simd_path(simd):
        for cell in ("lstm", "gru"):
            m, leaves, call = _case(cell, torch.float32, False, False, 0)
            got = _run(m, leaves, call)
            with monkeypatch.context() as mp:
                mp.setattr(ops, "bidirectional_layer", _sequential)
                want = _run(m, leaves, call)
            _assert_bitwise(got, want, f"{cell} on {simd}")


def test_inference_and_no_state():
    """No grad (nothing saved) and no initial state: the op's outputs equal two layer calls."""
    torch.set_num_threads(2)
    for cell in ops.CELLS:
        _, x, state, weights, lengths, _, _ = op_args(cell, requires_grad=False, state=False)
        _, _, _, weights_r, _, _, _ = op_args(cell, requires_grad=False, seed=1)
        for training in (False, True):
            got = torch.ops.rnnfast.bidirectional_layer(cell, x, [], [], weights, weights_r,
                                                        lengths, training)
            want = (torch.ops.rnnfast.layer(cell, x, [], weights, lengths, False, training)
                    + torch.ops.rnnfast.layer(cell, x, [], weights_r, lengths, True, training))
            assert len(got) == len(want) == 6
            for a, b in zip(got, want):
                for u, v in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
                    assert torch.equal(u, v), cell


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_one_direction_without_initial_state(cell, monkeypatch):
    """The forward direction given initial states, the reverse one none (and the other way
    round): gradients of the given states, the input and every weight equal two layer
    calls'."""
    torch.set_num_threads(2)
    _, x, state, weights, lengths, _, _ = op_args(cell)
    _, _, state_r, weights_r, _, _, _ = op_args(cell, seed=1)
    for s, s_r in ((state, []), ([], state_r)):
        leaves = [x] + list(s) + list(s_r) + list(weights) + list(weights_r)

        def grads(fn):
            (y, h), (y_r, h_r) = fn(cell, x, s, s_r, weights, weights_r, lengths)
            loss = (y * y).sum() + (y_r * y_r.flip(0)).sum() + h[0].sum() + 2 * h_r[0].sum()
            return torch.autograd.grad(loss, leaves)
        for a, b in zip(grads(ops.bidirectional_layer), grads(_sequential)):
            assert torch.equal(a, b)


def test_float64_keeps_the_callers_denormal_mode(monkeypatch):
    """float64 keeps the calling thread's denormal handling (torch.set_flush_denormal): on the
    concurrent schedule the reverse direction runs on another thread, which must take the
    caller's mode, so that subnormal states are flushed (or kept) as layer by layer."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    m = rnnfast.LSTM(4, 6, bidirectional=True, bias=False, dtype=torch.float64)
    x = randn(5, 3, 4, seed=1) * 1e-307  # outputs around the smallest normal, 2.2e-308
    outs = {}
    try:
        for flush in (False, True):
            if not torch.set_flush_denormal(flush):
                pytest.skip("this CPU cannot flush denormals")
            with torch.no_grad():
                got = m(x)[0]
                with monkeypatch.context() as mp:
                    mp.setattr(ops, "bidirectional_layer", _sequential)
                    want = m(x)[0]
            assert torch.equal(got, want), f"flush={flush}"
            outs[flush] = got
    finally:
        torch.set_flush_denormal(False)
    tiny = torch.finfo(torch.float64).tiny
    for d in (slice(0, 6), slice(6, 12)):  # each direction's outputs
        subnormal = lambda t: ((t != 0) & (t.abs() < tiny)).any().item()  # noqa: E731
        assert subnormal(outs[False][..., d]) and not subnormal(outs[True][..., d])


def test_double_backward_matches_layer_by_layer(monkeypatch):
    """create_graph=True: the pair's backward runs the differentiable reference per direction,
    and the gradients of gradients equal the layer-by-layer ones."""
    def grads_of_grads(m, x, h0, c0):
        out, _ = m(x, (h0, c0))
        params = [x, h0, c0] + list(m.parameters())
        g = torch.autograd.grad((out * out).sum(), params, create_graph=True)
        return torch.autograd.grad(sum((t * t).sum() for t in g), params)

    torch.manual_seed(0)
    m = rnnfast.LSTM(3, 4, bidirectional=True, num_layers=2, dtype=torch.float64)
    x = randn(5, 2, 3, seed=1).requires_grad_()
    h0 = randn(4, 2, 4, seed=2).requires_grad_()
    c0 = randn(4, 2, 4, seed=3).requires_grad_()
    got = grads_of_grads(m, x, h0, c0)
    monkeypatch.setattr(ops, "bidirectional_layer", _sequential)
    want = grads_of_grads(m, x, h0, c0)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_torch_func_runs_the_reference(pair_calls):
    """Under torch.func the pair wrapper runs two reference loops: grad works and agrees with
    autograd through the fused op."""
    torch.manual_seed(0)
    m = rnnfast.GRU(3, 4, bidirectional=True, dtype=torch.float64)
    x = randn(5, 2, 3, seed=1)
    params = dict(m.named_parameters())

    def loss(p, x):
        out, h = torch.func.functional_call(m, p, (x,))
        return (out * out).sum() + h.sum()

    got = torch.func.grad(loss)(params, x)
    assert pair_calls == ["gru"]  # the wrapper ran, on its reference path
    want = torch.autograd.grad(loss(params, x), list(params.values()))
    assert pair_calls == ["gru", "gru"]
    for name, g in zip(params, want):
        torch.testing.assert_close(got[name], g, atol=1e-12, rtol=0)


def test_errors_name_the_direction():
    _, x, state, weights, lengths, _, _ = op_args("lstm", requires_grad=False)
    bad = [w.clone() for w in weights]
    bad[1] = bad[1][:, :-1]  # weight_hh one column short
    with pytest.raises(RuntimeError, match=r"reverse direction.*weight_hh must have shape"):
        torch.ops.rnnfast.bidirectional_layer("lstm", x, state, state, weights, bad, lengths,
                                              False)
    with pytest.raises(RuntimeError, match=r"bidirectional_layer\(lstm\).*weight_hh must have"):
        torch.ops.rnnfast.bidirectional_layer("lstm", x, state, state, bad, weights, lengths,
                                              False)
    out = torch.ops.rnnfast.bidirectional_layer("lstm", x, state, state, weights, weights,
                                                lengths, False)
    with pytest.raises(RuntimeError, match="training=False"):
        torch.ops.rnnfast.bidirectional_layer_backward(
            "lstm", out[0], [], out[3], [], x, weights, weights, lengths, out[2], out[5])


@pytest.mark.parametrize("cell", ops.CELLS)
def test_opcheck(cell):
    for lengths in (False, True):
        for training in (False, True):  # (a backward needs the training forward's workspace)
            _, x, state, weights, L, _, _ = op_args(cell, lengths=lengths,
                                                    requires_grad=training)
            _, _, state_r, weights_r, _, _, _ = op_args(cell, lengths=lengths, seed=1,
                                                        requires_grad=training)
            torch.library.opcheck(torch.ops.rnnfast.bidirectional_layer,
                                  (cell, x, state, state_r, weights, weights_r, L, training))
        with torch.no_grad():
            y, s, ws, y_r, s_r, ws_r = torch.ops.rnnfast.bidirectional_layer(
                cell, x, state, state_r, weights, weights_r, L, True)
        x = x.detach()
        weights, weights_r = [w.detach() for w in weights], [w.detach() for w in weights_r]
        # the forward direction: output gradient only; the reverse one: both
        for grads_r in ((torch.randn_like(y_r), [torch.randn_like(t) for t in s_r]),
                        (torch.randn_like(y_r), [None] * len(s_r))):
            args = (cell, torch.randn_like(y), [None] * len(s)) + grads_r + (
                x, weights, weights_r, L, ws, ws_r)
            torch.library.opcheck(torch.ops.rnnfast.bidirectional_layer_backward, args)
            gi, gs, gw, gs_r, gw_r = torch.ops.rnnfast.bidirectional_layer_backward(*args)
            a = torch.ops.rnnfast.layer_backward(cell, args[1], args[2], x, weights, L, ws,
                                                 False)
            b = torch.ops.rnnfast.layer_backward(cell, args[3], args[4], x, weights_r, L,
                                                 ws_r, True)
            assert b[0].abs().sum() > 0  # the reverse direction's input gradient counts
            assert torch.equal(gi, a[0] + b[0])
            for u, v in zip(gs + gw + gs_r + gw_r, a[1] + a[2] + b[1] + b[2]):
                assert torch.equal(u, v)
