"""Two stacked layers of one direction in one op, for inference (rnnfast::stacked_layers; the
stacked schedule of csrc/core/rnn.h: layer_forward_stack). On two threads, for small layers, the
two layers run as a wavefront, one core each; otherwise one after the other. Either way the
results must be the layer-by-layer computation's (two rnnfast::layer calls) bit for bit:
outputs and final states at 1, 2 and 3 threads, for every cell, dense and packed, with zoneout
and a projection, 2 to 4 layers. With gradients needed the modules run the layer ops as before.
"""
from __future__ import annotations

import pytest
import torch

import rnnfast
from rnnfast import ops
from rnn_testutils import (CELL_MODULES, SIMD_PATHS, count_calls, hx_shapes, op_args, randn,
                           simd_path)
from torch.nn.utils.rnn import pack_padded_sequence


def _sequential(cell, input, state, state_upper, weights, weights_upper, lengths=None,
                zoneout=(), zoneout_upper=()):
    """The layer-by-layer computation the stacked op must equal."""
    lower = ops.layer(cell, input, state, weights, lengths, False, zoneout)
    return lower, ops.layer(cell, lower[0], state_upper, weights_upper, lengths, False,
                            zoneout_upper)


@pytest.fixture
def stack_calls(monkeypatch):
    """Counts the calls of the stacked op itself (which still runs)."""
    return count_calls(monkeypatch, ops, "_STACK")


# T = 9 steps of B = 11 rows, hidden 20: inside the stacked schedule's sizes on 2 threads
# (W_hh up to 64 KB, up to 16 rows, 8 steps or more; csrc/core/cpu/stack.cpp: stack_concurrent)
T, B, I, H = 9, 11, 12, 20
LENGTHS = [9, 1, 8, 3, 9, 6, 2, 7, 4, 5, 9]  # unsorted: the permutes run too


def _module(cell, dtype, layers, zoneout, proj):
    _, fast_name, kw = CELL_MODULES[cell]
    kw = dict(kw, num_layers=layers)
    if proj:
        kw["proj_size"] = proj
    if zoneout:
        kw["zoneout"] = (0.3, 0.2) if fast_name == "LSTM" else 0.3
    torch.manual_seed(0)
    return getattr(rnnfast, fast_name)(I, H, dtype=dtype, **kw)


def _run(m, dtype, packed, with_hx):
    """The module's output and final states under no_grad (zoneout masks from seed 5)."""
    lstm = isinstance(m, rnnfast.LSTM)
    x = randn(T, B, I, dtype=dtype, seed=1)
    hx = None
    if with_hx:
        hs, cs = hx_shapes("LSTM" if lstm else "GRU", m.num_layers, False, B, H, m.proj_size)
        h0 = randn(*hs, dtype=dtype, seed=2)
        hx = (h0, randn(*cs, dtype=dtype, seed=3)) if lstm else h0
    if packed:
        x = pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False)
    torch.manual_seed(5)
    with torch.no_grad():
        out, state = m(x, hx)
    if packed:
        out = out.data
    return [out] + (list(state) if lstm else [state])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", list(CELL_MODULES))
def test_stack_equals_layer_by_layer_bitwise(cell, dtype, stack_calls, monkeypatch):
    """Every cell, dense and packed, eval and training mode (zoneout's masks), with and without
    initial states and, for LSTM, a projection: the modules' stacked op against two layer calls,
    at 1, 2 and 3 threads."""
    variants = [(2, False, False, 0, True), (2, True, True, 0, False), (3, False, True, 0, True)]
    if cell == "lstm":
        variants += [(2, True, False, 7, True), (4, False, False, 5, False)]
    for layers, packed, zoneout, proj, with_hx in variants:
        m = _module(cell, dtype, layers, zoneout, proj)
        for training in (False, True):
            m.train(training)
            for n in (1, 2, 3):
                torch.set_num_threads(n)
                del stack_calls[:]
                waves = rnnfast._C.stack_wavefronts()
                got = _run(m, dtype, packed, with_hx)
                assert len(stack_calls) == layers // 2, "each pair of layers should be one call"
                # on 2 threads every call is a wavefront (these sizes are inside its rule)
                assert rnnfast._C.stack_wavefronts() - waves == (len(stack_calls) if n == 2
                                                                  else 0)
                with monkeypatch.context() as mp:
                    mp.setattr(ops, "stacked_layers", _sequential)
                    want = _run(m, dtype, packed, with_hx)
                what = (f"{cell} {dtype} layers={layers} packed={packed} zoneout={zoneout} "
                        f"proj={proj} hx={with_hx} training={training} threads={n}")
                for k, (g, w) in enumerate(zip(got, want)):
                    assert torch.equal(g, w), f"{what}: result {k} differs"


@pytest.mark.parametrize("simd", SIMD_PATHS)
def test_stack_on_every_simd_path(simd, monkeypatch):
    """The stacked schedule (2 threads) on each SIMD path this CPU has, LSTM and GRU."""
    torch.set_num_threads(2)
    with simd_path(simd):
        for cell in ("lstm", "gru"):
            m = _module(cell, torch.float32, 2, False, 0).eval()
            waves = rnnfast._C.stack_wavefronts()
            got = _run(m, torch.float32, False, True)
            assert rnnfast._C.stack_wavefronts() == waves + 1
            with monkeypatch.context() as mp:
                mp.setattr(ops, "stacked_layers", _sequential)
                want = _run(m, torch.float32, False, True)
            for g, w in zip(got, want):
                assert torch.equal(g, w), f"{cell} on {simd}"


def test_rule():
    """The sizes the stacked schedule is taken at (csrc/core/cpu/stack.cpp), and the tests'
    sizes inside them."""
    rule = rnnfast._C.stack_concurrent
    assert rule(2, 64 << 10, 8, 16) and rule(2, 1024, 100, 1)
    assert not rule(1, 1024, 100, 8) and not rule(3, 1024, 100, 8)
    assert not rule(2, (64 << 10) + 1, 100, 8) and not rule(2, 1024, 7, 8)
    assert not rule(2, 1024, 100, 17)
    assert rule(2, 4 * H * H * 8, T, B)  # LSTM float64


def test_long_packed_sequences_fall_back():
    """A packed sequence whose pieces would plan otherwise than the whole (the input projection
    per step for the whole, one GEMM for a piece's fewer rows) runs one layer after the other,
    with the same results."""
    torch.set_num_threads(2)
    m = _module("gru", torch.float32, 2, False, 0).eval()
    lengths = [2000] * 2 + [1500] * 14
    x = pack_padded_sequence(randn(2000, 16, I, dtype=torch.float32, seed=4),
                             torch.tensor(lengths))
    waves = rnnfast._C.stack_wavefronts()
    with torch.no_grad():
        got = m(x)[0].data
        assert rnnfast._C.stack_wavefronts() == waves
        y, _ = ops.layer("gru", x.data, [], [getattr(m, n) for n in m._all_weights[0]],
                         torch.tensor(lengths))
        want, _ = ops.layer("gru", y, [], [getattr(m, n) for n in m._all_weights[1]],
                            torch.tensor(lengths))
    assert torch.equal(got, want)


def test_gradients_take_the_layer_ops(stack_calls):
    """With gradients needed, or dropout between the layers in training, the layers run one op
    each (the stacked op has no backward), and the gradients are torch's."""
    torch.set_num_threads(2)
    m = _module("lstm", torch.float64, 2, False, 0)
    ref = torch.nn.LSTM(I, H, 2, dtype=torch.float64)
    ref.load_state_dict(m.state_dict())
    x = randn(T, B, I, seed=1).requires_grad_()
    out, _ = m(x)
    out.sum().backward()
    assert stack_calls == []
    x_ref = x.detach().clone().requires_grad_()
    ref(x_ref)[0].sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-12, rtol=0)
    for (name, p), p_ref in zip(m.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, atol=1e-12, rtol=0, msg=name)
    m.dropout = 0.5
    with torch.no_grad():
        m.train()(x)
        assert stack_calls == []
        m.eval()(x)  # (eval: no dropout)
        assert stack_calls == ["lstm"]


def test_op_refuses_gradients():
    """Called directly with inputs that require grad, its outputs refuse a backward."""
    _, x, state, weights, lengths, _, _ = op_args("gru", requires_grad=True)
    out = torch.ops.rnnfast.stacked_layers("gru", x, state, [], weights,
                                           _upper_weights(weights), lengths)
    with pytest.raises(RuntimeError, match="not implemented"):
        out[2].sum().backward()


def _upper_weights(weights):
    """Weights for an upper layer reading the lower one's output (weight_ih [G*H, S])."""
    w_ih, w_hh = weights[0], weights[1]
    upper = [torch.randn(w_ih.shape[0], w_hh.shape[1], dtype=w_ih.dtype)]
    return upper + [w.detach().clone() for w in weights[1:]]


def test_errors_name_the_layer():
    _, x, state, weights, lengths, _, _ = op_args("lstm", requires_grad=False)
    upper = _upper_weights(weights)
    bad = [w.clone() for w in upper]
    bad[1] = bad[1][:, :-1]  # weight_hh one column short
    with pytest.raises(RuntimeError, match=r"upper layer.*weight_hh must have shape"):
        torch.ops.rnnfast.stacked_layers("lstm", x, state, state, weights, bad, lengths)
    with pytest.raises(RuntimeError, match=r"stacked_layers\(lstm\).*weight_hh must have"):
        torch.ops.rnnfast.stacked_layers("lstm", x, state, state,
                                         weights[:1] + bad[1:2] + weights[2:], upper, lengths)


@pytest.mark.parametrize("cell", ops.CELLS)
def test_opcheck(cell):
    for lengths in (False, True):
        _, x, state, weights, L, _, _ = op_args(cell, lengths=lengths, requires_grad=False)
        upper = _upper_weights(weights)
        torch.library.opcheck(torch.ops.rnnfast.stacked_layers,
                              (cell, x, state, state, weights, upper, L))
