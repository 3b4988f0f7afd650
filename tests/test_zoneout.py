"""Zoneout (Krueger et al. 2017, "Zoneout: Regularizing RNNs by Randomly Preserving Hidden
Activations"): ``zoneout=p`` on rnnfast.LSTM / GRU / RNN and their cells, ``(p_c, p_h)`` for
the LSTM's two states.

Per step, row and unit, after the cell's update s~_t of a state:

    training:  s_t = m * s_{t-1} + (1 - m) * s~_t,  m ~ Bernoulli(p)   (1 keeps the old value)
    eval:      s_t = p * s_{t-1} + (1 - p) * s~_t                      (the expectation)

and the output y_t is the zoned h_t. The oracle below is written from these equations and the
cells' own (torch's LSTM/GRU/RNN), in float64 with plain torch ops; in training it redraws the
masks from the same RNG state with the modules' mask function (rnnfast.ops.keep_mask, itself
tested against an independent SplitMix64 below) in their documented order (per layer and direction, h's
mask [T, B, S] then c's [T, B, H], only for a state with p > 0). Compared: outputs, final
states and the gradients of the input, the initial states and every parameter.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnfast
from rnn_testutils import SIMD_PATHS, randn, simd_path
from rnnfast.ops import keep_mask

ATOL = 1e-9


def _cell_step(kind, nonlinearity, x, h, c, w):
    """One step of torch's cell from the equations: (h~, c~)."""
    gi = F.linear(x, w["weight_ih"], w.get("bias_ih"))
    gh = F.linear(h, w["weight_hh"], w.get("bias_hh"))
    if kind == "LSTM":
        i, f, g, o = (gi + gh).chunk(4, -1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        if "weight_hr" in w:
            h_new = F.linear(h_new, w["weight_hr"])
        return h_new, c_new
    if kind == "GRU":
        xr, xz, xn = gi.chunk(3, -1)
        hr, hz, hn = gh.chunk(3, -1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h, None
    return (torch.tanh if nonlinearity == "tanh" else torch.relu)(gi + gh), None


def reference(m, x, hx, zone):
    """The zoned network m ([T, B, I] input, no batch_first) from the equations; zone(layer,
    direction) gives [z_h, z_c]: each a [T, B, *] mask or a float probability (0: none)."""
    kind = type(m).__name__
    nonlinearity = getattr(m, "nonlinearity", "tanh")
    params = dict(m.named_parameters())
    T, B = x.shape[:2]
    dirs = 2 if m.bidirectional else 1
    S, H = m.proj_size or m.hidden_size, m.hidden_size
    h0 = hx[0] if kind == "LSTM" else hx
    c0 = hx[1] if kind == "LSTM" else None
    hs, cs = [], []
    for layer in range(m.num_layers):
        outs = []
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w = {n[:-len(sfx)]: p for n, p in params.items() if n.endswith(sfx)}
            k = layer * dirs + d
            h, c = h0[k], (c0[k] if c0 is not None else None)
            z_h, z_c = zone(layer, d)
            out = [None] * T
            for t in (range(T - 1, -1, -1) if d else range(T)):
                h_new, c_new = _cell_step(kind, nonlinearity, x[t], h, c, w)
                m_h = z_h[t] if torch.is_tensor(z_h) else z_h
                h = m_h * h + (1 - m_h) * h_new
                if c is not None:
                    m_c = z_c[t] if torch.is_tensor(z_c) else z_c
                    c = m_c * c + (1 - m_c) * c_new
                out[t] = h
            outs.append(torch.stack(out))
            hs.append(h)
            cs.append(c)
        x = torch.cat(outs, -1)
    states = (torch.stack(hs), torch.stack(cs)) if kind == "LSTM" else torch.stack(hs)
    return x, states


def draw_masks(m, p_h, p_c, rows):
    """The masks the module draws in training, in its order (see the top)."""
    dirs = 2 if m.bidirectional else 1
    S, H = m.proj_size or m.hidden_size, m.hidden_size
    masks = {}
    for layer in range(m.num_layers):
        for d in range(dirs):
            z_h = keep_mask(rows + (S,), p_h, torch.float64) if p_h else 0.0
            z_c = keep_mask(rows + (H,), p_c, torch.float64) if p_c else 0.0
            masks[layer, d] = [z_h, z_c]
    return masks


# (module, kwargs, p_h, p_c): zoneout=p is p for every state; an LSTM pair is (p_c, p_h)
CASES = [
    ("LSTM", dict(zoneout=0.3), 0.3, 0.3),
    ("LSTM", dict(zoneout=(0.5, 0.2), proj_size=3), 0.2, 0.5),
    ("LSTM", dict(zoneout=(0.0, 0.25)), 0.25, 0.0),
    ("GRU", dict(zoneout=0.4), 0.4, 0.0),
    ("RNN", dict(zoneout=0.35, nonlinearity="relu"), 0.35, 0.0),
]


def _ids(case):
    return f"{case[0]}-" + "-".join(f"{k}={v}" for k, v in case[1].items())


def _run_and_grads(fn, leaves, params):
    out, hn = fn()
    hn = hn if isinstance(hn, tuple) else (hn,)
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum() + \
        sum((s * s).sum() * (k + 1) for k, s in enumerate(hn))
    grads = torch.autograd.grad(loss, leaves + params)
    return [out, *hn, *grads]


def _setup(name, kw):
    torch.manual_seed(0)
    m = getattr(rnnfast, name)(5, 6, num_layers=2, bidirectional=True, dtype=torch.float64, **kw)
    T, B = 7, 3
    S = kw.get("proj_size", 0) or 6
    x = randn(T, B, 5, seed=1).requires_grad_()
    h0 = randn(4, B, S, seed=2).requires_grad_()
    c0 = randn(4, B, 6, seed=3).requires_grad_()
    hx = (h0, c0) if name == "LSTM" else h0
    leaves = [x, h0, c0] if name == "LSTM" else [x, h0]
    return m, x, hx, leaves


def _compare(got, want, what):
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0, msg=lambda s: f"{what} [{k}]: {s}")


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_eval_is_the_expectation(case):
    name, kw, p_h, p_c = case
    m, x, hx, leaves = _setup(name, kw)
    m.eval()
    params = list(m.parameters())
    got = _run_and_grads(lambda: m(x, hx), leaves, params)
    want = _run_and_grads(lambda: reference(m, x, hx, lambda layer, d: [p_h, p_c]), leaves,
                          params)
    _compare(got, want, f"eval {case}")
    # and it differs from the network without zoneout
    plain = getattr(rnnfast, name)(5, 6, num_layers=2, bidirectional=True, dtype=torch.float64,
                                   **{k: v for k, v in kw.items() if k != "zoneout"})
    plain.load_state_dict(m.state_dict())
    assert not torch.allclose(plain.eval()(x, hx)[0], got[0])


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_training_masks_from_torch_rng(case):
    name, kw, p_h, p_c = case
    m, x, hx, leaves = _setup(name, kw)
    m.train()
    params = list(m.parameters())
    torch.manual_seed(11)
    got = _run_and_grads(lambda: m(x, hx), leaves, params)
    torch.manual_seed(11)
    masks = draw_masks(m, p_h, p_c, tuple(x.shape[:2]))
    want = _run_and_grads(lambda: reference(m, x, hx, lambda layer, d: masks[layer, d]), leaves,
                          params)
    _compare(got, want, f"training {case}")
    # reproducible with the seed; another draw differs
    torch.manual_seed(11)
    again = m(x, hx)[0]
    assert torch.equal(again, got[0])
    assert not torch.equal(m(x, hx)[0], got[0])


def test_rate_of_kept_units():
    """In training a unit keeps its previous h (y_t == y_{t-1} exactly) with probability p."""
    torch.manual_seed(0)
    p = 0.3
    m = rnnfast.RNN(8, 32, zoneout=p).train()
    x = torch.randn(200, 8, 8)
    out, _ = m(x)
    kept = (out[1:] == out[:-1]).double().mean().item()
    assert abs(kept - p) < 0.02, kept
    lstm = rnnfast.LSTM(8, 32, zoneout=(0.0, p)).train()
    out, _ = lstm(x)
    assert abs((out[1:] == out[:-1]).double().mean().item() - p) < 0.02


@pytest.mark.parametrize("training", [False, True])
def test_packed_sequence(training):
    """A PackedSequence: eval equals the padded call's rows; in training the masks are drawn
    for the packed rows ([N, *], PackedSequence.data order) and match the equations with those
    masks placed at their (t, b)."""
    torch.manual_seed(0)
    m = rnnfast.LSTM(4, 5, num_layers=2, bidirectional=True, zoneout=(0.4, 0.3),
                     dtype=torch.float64).train(training)
    lengths = torch.tensor([6, 5, 3, 1])
    x = randn(6, 4, 4, seed=4)
    packed = pack_padded_sequence(x, lengths)
    hx = (randn(4, 4, 5, seed=5), randn(4, 4, 5, seed=6))
    torch.manual_seed(3)
    out, (h, c) = m(packed, hx)
    out, _ = pad_packed_sequence(out)
    active = lengths.unsqueeze(0) > torch.arange(6).unsqueeze(1)  # [T, B]
    tt, bb = active.nonzero(as_tuple=True)                         # packed row order

    def padded(z):
        if not torch.is_tensor(z):
            return z
        return z.new_zeros(6, 4, z.shape[-1]).index_put((tt, bb), z)

    if training:
        torch.manual_seed(3)
        masks = draw_masks(m, 0.3, 0.4, (int(lengths.sum()),))
        zone = lambda layer, d: [padded(z) for z in masks[layer, d]]  # noqa: E731
    else:
        zone = lambda layer, d: [0.3, 0.4]  # noqa: E731
    # the equations on each sequence alone (its own length), stacked
    for b in range(4):
        L = int(lengths[b])
        hb = (hx[0][:, b:b + 1], hx[1][:, b:b + 1])

        def zone_b(layer, d, b=b, L=L):
            return [z[:L, b:b + 1] if torch.is_tensor(z) else z for z in zone(layer, d)]

        ref_out, (ref_h, ref_c) = reference(m, x[:L, b:b + 1], hb, zone_b)
        torch.testing.assert_close(out[:L, b:b + 1], ref_out, atol=ATOL, rtol=0)
        torch.testing.assert_close(h[:, b:b + 1], ref_h, atol=ATOL, rtol=0)
        torch.testing.assert_close(c[:, b:b + 1], ref_c, atol=ATOL, rtol=0)


@pytest.mark.parametrize("cls,kw", [(rnnfast.LSTMCell, dict(zoneout=(0.3, 0.6))),
                                    (rnnfast.GRUCell, dict(zoneout=0.4)),
                                    (rnnfast.RNNCell, dict(zoneout=0.5, nonlinearity="tanh"))])
def test_cells(cls, kw):
    torch.manual_seed(0)
    cell = cls(4, 5, dtype=torch.float64, **kw)
    lstm = cls is rnnfast.LSTMCell
    p = kw["zoneout"]
    p_h, p_c = (p[1], p[0]) if lstm else (p, 0.0)
    x, h, c = randn(3, 4, seed=7), randn(3, 5, seed=8), randn(3, 5, seed=9)
    w = dict(cell.named_parameters())
    kind = {rnnfast.LSTMCell: "LSTM", rnnfast.GRUCell: "GRU", rnnfast.RNNCell: "RNN"}[cls]
    h_new, c_new = _cell_step(kind, "tanh", x, h, c, w)
    cell.eval()
    got = cell(x, (h, c)) if lstm else cell(x, h)
    torch.testing.assert_close(got[0] if lstm else got, p_h * h + (1 - p_h) * h_new,
                               atol=1e-12, rtol=0)
    if lstm:
        torch.testing.assert_close(got[1], p_c * c + (1 - p_c) * c_new, atol=1e-12, rtol=0)
    cell.train()
    torch.manual_seed(4)
    got = cell(x, (h, c)) if lstm else cell(x, h)
    torch.manual_seed(4)
    m_h = keep_mask((1, 3, 5), p_h, torch.float64)[0]
    torch.testing.assert_close(got[0] if lstm else got, m_h * h + (1 - m_h) * h_new,
                               atol=1e-12, rtol=0)
    if lstm:
        m_c = keep_mask((1, 3, 5), p_c, torch.float64)[0]
        torch.testing.assert_close(got[1], m_c * c + (1 - m_c) * c_new, atol=1e-12, rtol=0)
    assert "zoneout=" in repr(cell)


@pytest.mark.parametrize("cell", ["lstm", "gru", "lstm_peephole"])
def test_op_gradcheck_and_gradgradcheck(cell):
    """The op with fixed masks (and with probabilities) is differentiable to second order."""
    from rnn_testutils import op_args

    _, x, state, weights, lengths, reverse, _ = op_args(cell, T=3, B=2, I=2, H=3)
    info = rnnfast._cells.cell(cell)
    g = torch.Generator().manual_seed(0)
    masks = [torch.bernoulli(torch.full((3, 2, 3), 0.4, dtype=torch.float64), generator=g)
             for _ in range(info.states)]
    probs = [torch.tensor(0.3, dtype=torch.float64)] * info.states
    for zoneout in (masks, probs):
        def f(x, *rest):
            st, ws = list(rest[:len(state)]), list(rest[len(state):])
            out, final = rnnfast.ops.layer(cell, x, st, ws, lengths, reverse, zoneout)
            return (out, *final)

        inputs = (x, *state, *weights)
        assert torch.autograd.gradcheck(f, inputs)
        assert torch.autograd.gradgradcheck(f, inputs)


def test_compile_fullgraph():
    torch.manual_seed(0)
    m = rnnfast.LSTM(4, 6, num_layers=2, zoneout=(0.2, 0.1))
    x = torch.randn(5, 3, 4)
    torch._dynamo.reset()  # a fresh recompile budget (the suite compiles many modules)
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    m.eval()
    torch.testing.assert_close(compiled(x)[0], m(x)[0])
    m.train()
    torch.manual_seed(5)
    a = m(x)[0]
    torch.manual_seed(5)
    torch.testing.assert_close(compiled(x)[0], a)


@pytest.mark.parametrize("bad", [1.5, -0.1, "0.2", True, None, (0.1,), (0.1, 0.2, 0.3)])
def test_bad_zoneout(bad):
    with pytest.raises(ValueError, match="zoneout"):
        rnnfast.LSTM(4, 5, zoneout=bad)
    with pytest.raises(ValueError, match="zoneout"):
        rnnfast.LSTMCell(4, 5, zoneout=bad)
    with pytest.raises(ValueError, match="zoneout"):
        rnnfast.GRU(4, 5, zoneout=(0.1, 0.2) if bad is None else bad)


def test_op_rejects_bad_zoneout_arguments():
    op = torch.ops.rnnfast.layer
    x = torch.randn(3, 2, 4)
    w = [torch.randn(15, 4), torch.randn(15, 5)]  # GRU, H = 5
    with pytest.raises(RuntimeError, match=r"zoneout\[0\] \(h\) must have shape \[3, 2, 5\]"):
        op("gru", x, [], w, None, False, False, [torch.zeros(3, 2, 4)])
    with pytest.raises(RuntimeError, match="one tensor per state"):
        op("gru", x, [], w, None, False, False, [torch.tensor(0.1), torch.tensor(0.1)])
    with pytest.raises(RuntimeError, match=r"probability and must lie in \[0, 1\], got 1.5"):
        op("gru", x, [], w, None, False, False, [torch.tensor(1.5)])
    with pytest.raises(RuntimeError, match="dtype"):
        op("gru", x, [], w, None, False, False, [torch.zeros(3, 2, 5, dtype=torch.float64)])
    # a valid mask and a valid probability are taken; None and [] are no zoneout
    y0, _, _ = op("gru", x, [], w, None, False, False, None)
    y1, _, _ = op("gru", x, [], w, None, False, False, [])
    y2, _, _ = op("gru", x, [], w, None, False, False, [torch.tensor(0.0)])
    assert torch.equal(y0, y1) and torch.equal(y0, y2)
    y3, _, _ = op("gru", x, [], w, None, False, False, [torch.ones(3, 2, 5)])
    assert torch.equal(y3, torch.zeros_like(y3))  # every unit keeps its zero initial state


# --- the masks' generator (rnnfast.ops.keep_mask, csrc/core/random.h) ---

def _expected_mask(seed, p, n):
    """Elements [0, n) of the keep mask of `seed`, written here from the published SplitMix64
    algorithm (numpy uint64 arithmetic wraps mod 2^64 as the C++ does): word k is the
    finaliser of seed + (k + 1) * gamma; element i is 1 when half i % 2 (low, high) of word
    i // 2 is below floor(p * 2^32)."""
    with np.errstate(over="ignore"):
        k = np.arange((n + 1) // 2, dtype=np.uint64)
        z = np.uint64(seed % 2**64) + (k + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    halves = np.stack([z & np.uint64(0xFFFFFFFF), z >> np.uint64(32)], axis=1).reshape(-1)[:n]
    return (halves < np.uint64(int(p * 2**32))).astype(np.float64)


@pytest.mark.parametrize("simd", SIMD_PATHS)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_keep_mask_elements(simd, threads):
    """Every element is the generator's, on every SIMD path and thread count (the parallel
    fill starts its chunks mid-word), at odd and even sizes, in float32 and float64."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with simd_path(simd):
            # 2 * 70001 and 3 * 65537 elements: chunks of 2 and 3 threads starting at odd
            # elements (the second half of a word); eight seeds at p = 0.5, so that a wrong
            # half at a seam shows with probability 1 - 2^-8 or more
            cases = [(0, 0.5, (7,)), (12345, 0.3, (3, 5, 7)), (2**63 - 1, 0.7, (3, 65537)),
                     (-5, 0.05, (2, 70001)), (99, 0.999, (50001,))]
            cases += [(seed, 0.5, shape) for seed in range(8)
                      for shape in ((2, 70001), (3, 65537))]
            for seed, p, shape in cases:
                for dtype in (torch.float32, torch.float64):
                    m = torch.ops.rnnfast.keep_mask(torch.tensor(seed), p, list(shape), dtype)
                    assert m.shape == shape and m.dtype == dtype
                    want = _expected_mask(seed, p, m.numel())
                    assert np.array_equal(m.flatten().double().numpy(), want), (simd, seed, p)
    finally:
        torch.set_num_threads(old)


def test_keep_mask_rate_and_reproducibility():
    for p in (0.0, 0.05, 0.3, 0.9, 1.0):
        m = keep_mask((1000, 1000), p, torch.float32)
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        # binomial standard deviation at n = 1e6 is at most 5e-4
        assert abs(m.mean().item() - p) < 3e-3, (p, m.mean().item())
    m = keep_mask((1000, 1000), 0.5, torch.float64).flatten()
    # neighbours (the two halves of one word, and consecutive words) are uncorrelated
    for lag in (1, 2, 3):
        r = torch.corrcoef(torch.stack([m[:-lag], m[lag:]]))[0, 1].item()
        assert abs(r) < 5e-3, (lag, r)
    torch.manual_seed(3)
    a = keep_mask((4, 9), 0.5, torch.float32)
    b = keep_mask((4, 9), 0.5, torch.float32)
    torch.manual_seed(3)
    assert torch.equal(keep_mask((4, 9), 0.5, torch.float32), a)
    assert not torch.equal(a, b)


def test_keep_mask_rejects_bad_arguments():
    op = torch.ops.rnnfast.keep_mask
    seed = torch.tensor(1)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 1.5"):
        op(seed, 1.5, [2], torch.float32)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        op(seed, 0.5, [2], torch.int32)
    with pytest.raises(TypeError, match="seed must be a 0-D int64 tensor"):
        op(torch.tensor([1, 2]), 0.5, [2], torch.float32)
    with pytest.raises(TypeError, match="seed must be a 0-D int64 tensor"):
        op(torch.tensor(1.0), 0.5, [2], torch.float32)
    with pytest.raises((ValueError, RuntimeError), match="negative"):
        op(seed, 0.5, [2, -1], torch.float32)


def test_keep_mask_opcheck():
    """The op's schema, fake kernel and dispatch agree (torch.library.opcheck)."""
    for dtype in (torch.float32, torch.float64):
        torch.library.opcheck(torch.ops.rnnfast.keep_mask.default,
                              (torch.tensor(5), 0.3, [3, 4], dtype))


def test_training_masks_under_torch_func():
    """torch.func draws the same masks as eager autograd from the same seed (grad), and vmap's
    randomness flags apply to them: 'same' gives every batch element the eager call's masks,
    the default mode refuses the random draw as it does for torch's own random ops."""
    torch.manual_seed(0)
    m = rnnfast.LSTM(3, 4, zoneout=(0.3, 0.4), dtype=torch.float64).train()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    params = dict(m.named_parameters())

    def loss(p):
        return torch.func.functional_call(m, p, (x,))[0].pow(2).sum()

    torch.manual_seed(7)
    g = torch.func.grad(loss)(params)
    torch.manual_seed(7)
    m(x)[0].pow(2).sum().backward()
    for name, p in params.items():
        torch.testing.assert_close(g[name], p.grad, atol=1e-12, rtol=0, msg=name)

    xs = torch.randn(3, 5, 2, 3, dtype=torch.float64)
    torch.manual_seed(9)
    got = torch.func.vmap(lambda xx: m(xx)[0], randomness="same")(xs)
    for i in range(3):
        torch.manual_seed(9)
        torch.testing.assert_close(got[i], m(xs[i])[0], atol=1e-12, rtol=0)
    with pytest.raises(RuntimeError, match="random"):
        torch.func.vmap(lambda xx: m(xx)[0])(xs)


@pytest.mark.parametrize("route", ["layer", "layer_input_grad", "pair", "stack", "op"])
def test_a_mask_that_requires_grad_is_refused(route):
    """Zoneout masks are constants to the kernels (the Functions return no gradient for
    them): a mask that requires grad is refused with grad mode on, whether or not anything
    else requires grad (with nothing else, the call would otherwise go straight to the
    kernel and its output would not even require grad), and taken under no_grad."""
    x = randn(3, 2, 4)
    w = [randn(15, 4), randn(15, 5), randn(15), randn(15)]  # GRU, H = 5
    mask = torch.bernoulli(torch.full((3, 2, 5), 0.5, dtype=x.dtype)).requires_grad_()
    match = r"zoneout(_reverse|_upper)?\[0\] requires grad"

    def call():
        if route == "layer":
            return rnnfast.ops.layer("gru", x, None, w, zoneout=[mask])
        if route == "layer_input_grad":
            return rnnfast.ops.layer("gru", x.requires_grad_(), None, w, zoneout=[mask])
        if route == "pair":
            return rnnfast.ops.bidirectional_layer("gru", x, None, None, w, w,
                                                   zoneout_reverse=[mask])
        if route == "stack":
            w_u = [randn(15, 5), randn(15, 5), randn(15), randn(15)]
            return rnnfast.ops.stacked_layers("gru", x, None, None, w, w_u,
                                              zoneout_upper=[mask])
        return torch.ops.rnnfast.layer("gru", x, [], w, None, False, True, [mask])

    with pytest.raises(ValueError, match=match):
        call()
    with torch.no_grad():
        call()


def test_a_number_in_the_zoneout_list_is_a_clear_error():
    """The ops take tensors: a Python float in the zoneout list gets the schema's error, not an
    AttributeError from the wrappers' requires-grad check."""
    x = randn(3, 2, 4).requires_grad_()
    w = [randn(15, 4), randn(15, 5), randn(15), randn(15)]  # GRU, H = 5
    with pytest.raises(RuntimeError, match="zoneout"):
        rnnfast.ops.layer("gru", x, None, w, zoneout=[0.1])
    with pytest.raises(RuntimeError, match="zoneout"):
        rnnfast.ops.bidirectional_layer("gru", x, None, None, w, w, zoneout=[0.1])


def test_eval_probability_made_under_inference_mode_serves_later_graphs():
    """The 0-D probabilities an eval call passes are made once per value and kept: the first
    one made under inference_mode must not be an inference tensor (autograd saves it when a
    later call records a graph), and one made under a default-device context goes to the CPU."""
    rnnfast.modules._PROBABILITIES.clear()
    torch.manual_seed(0)
    m = rnnfast.LSTM(4, 8, zoneout=(0.0, 0.3)).eval()
    x = torch.randn(5, 2, 4)
    with torch.inference_mode():
        y_inf, _ = m(x)
    y, _ = m(x)  # parameters require grad: the graph saves the probabilities
    assert y.requires_grad and torch.equal(y.detach(), y_inf)
    y.sum().backward()
    rnnfast.modules._PROBABILITIES.clear()
    with torch.device("meta"):  # a CPU model and input under another default device
        y_meta_ctx, _ = m(x)
    assert y_meta_ctx.device.type == "cpu" and torch.equal(y_meta_ctx.detach(), y_inf)
    assert not rnnfast.modules._PROBABILITIES  # made under a torch function mode: not kept
    # and a probability made under that context was not kept for later calls
    y_after, _ = m(x)
    assert torch.equal(y_after.detach(), y_inf)


@pytest.mark.parametrize("cls", [rnnfast.LSTM, rnnfast.GRU, rnnfast.LSTMCell, rnnfast.GRUCell])
def test_assigning_zoneout_after_construction_takes_effect(cls):
    """`m.zoneout = ...` after construction (a schedule, or switching it off) is validated and
    used by the next call, as dropout is; the repr follows it."""
    torch.manual_seed(0)
    plain = cls(4, 6)
    zoned = cls(4, 6, zoneout=0.4)
    zoned.load_state_dict(plain.state_dict())
    x = torch.randn(3, 4) if "Cell" in cls.__name__ else torch.randn(5, 3, 4)
    plain.eval(), zoned.eval()

    def out(m):
        r = m(x)
        return r[0] if isinstance(r, tuple) else r

    assert not torch.equal(out(zoned), out(plain))
    zoned.zoneout = 0.0
    assert torch.equal(out(zoned), out(plain)) and "zoneout" not in repr(zoned)
    zoned.zoneout = 0.4
    assert not torch.equal(out(zoned), out(plain)) and "zoneout=0.4" in repr(zoned)
    with pytest.raises(ValueError, match="zoneout should be a probability"):
        zoned.zoneout = 1.5
    assert zoned.zoneout == 0.4  # a refused value changes nothing


def test_module_pickled_before_the_zoneout_attribute_moved_still_loads():
    """Modules pickled when `zoneout` lived in the instance's __dict__ keep working."""
    m = rnnfast.GRU(4, 6, zoneout=0.2)
    d = m.__dict__
    d["zoneout"] = d.pop("_zoneout")  # the earlier layout
    assert m.zoneout == 0.2 and "zoneout=0.2" in repr(m)
    m.eval()(torch.randn(5, 3, 4))
    del d["_cell_name"]  # older still: the layer's cell was torch's mode's
    m.zoneout = 0.0
    assert m.zoneout == 0.0 and m.__dict__["_zoneout_p"] == (0.0,)


def test_zoneout_is_kept_as_plain_floats():
    """A numpy number is taken and stored as a float (torch.load(weights_only=True) of the
    whole module would refuse a numpy scalar)."""
    np = pytest.importorskip("numpy")
    m = rnnfast.LSTM(4, 6, zoneout=(np.float32(0.25), 0.5))
    assert m.zoneout == (0.25, 0.5) and all(type(v) is float for v in m.zoneout)
    c = rnnfast.GRUCell(4, 6, zoneout=np.float64(0.5))
    assert type(c.zoneout) is float


def test_training_masks_under_another_default_device():
    """A CPU model in training under a default-device context draws its masks on the CPU from
    the same seed (the seed tensor names its device)."""
    m = rnnfast.GRU(4, 6, zoneout=0.3).train()
    x = torch.randn(5, 3, 4)
    torch.manual_seed(7)
    ref, _ = m(x)
    torch.manual_seed(7)
    with torch.device("meta"):
        got, _ = m(x)
    assert got.device.type == "cpu" and torch.equal(got, ref)
