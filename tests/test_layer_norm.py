"""Layer normalisation (``layer_norm=True``) on ``rnnfast.GRU`` and ``rnnfast.GRUCell``, and
the parts of it both cells share: parameter names, shapes and initialisation, numerics of the
normalisation, and the device fallback. The LSTM's are in test_lstm_variants.py, against the
same kind of oracle.

The oracle is written here from the equations (Ba et al. 2016; haste's LayerNormGRU), in
float64 with plain torch ops, gate rows r, z, n:

    a = LN(x W_ih^T) * g_ih + b_ih,   r = LN(h W_hh^T) * g_hh + b_hh    (each [3H])
    r_t = sigmoid(a_r + r_r),  z_t = sigmoid(a_z + r_z),  n = tanh(a_n + r_t * r_n)
    h' = (1 - z_t) * n + z_t * h

with LN(v) = (v - mean(v)) / sqrt(var(v) + 1e-5) over the 3H features, biased variance.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import rnnfast
from rnn_testutils import ATOL, assert_results_close, call_dense, call_packed, fwd_bwd, randn
from test_lstm_variants import assert_float32_as_accurate_as_the_equations, layer_norm


class LayerNormGRUReference(nn.Module):
    """The layer-normalised GRU in plain torch ops, with rnnfast's parameter names."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 bidirectional=False, dtype=torch.float64):
        super().__init__()
        self.hidden_size, self.num_layers, self.batch_first = hidden_size, num_layers, batch_first
        self.dirs = 2 if bidirectional else 1
        H = hidden_size
        for layer in range(num_layers):
            for d in range(self.dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                isz = input_size if layer == 0 else H * self.dirs
                shapes = [("weight_ih", (3 * H, isz)), ("weight_hh", (3 * H, H))]
                if bias:
                    shapes += [("bias_ih", (3 * H,)), ("bias_hh", (3 * H,))]
                shapes += [("ln_ih_weight", (3 * H,)), ("ln_hh_weight", (3 * H,))]
                for name, shape in shapes:
                    p = torch.empty(shape, dtype=dtype).uniform_(-0.5, 0.5)
                    if name.startswith("ln_"):  # gains around 1, not 1
                        p += 1
                    setattr(self, name + sfx, nn.Parameter(p))

    def _p(self, name, layer, d):
        return getattr(self, f"{name}_l{layer}" + ("_reverse" if d else ""), None)

    def _direction(self, x, lengths, h, layer, d):
        T = x.shape[0]
        w_ih, w_hh = self._p("weight_ih", layer, d), self._p("weight_hh", layer, d)
        b_ih, b_hh = self._p("bias_ih", layer, d), self._p("bias_hh", layer, d)
        g_ih, g_hh = self._p("ln_ih_weight", layer, d), self._p("ln_hh_weight", layer, d)
        H = self.hidden_size
        outs = [None] * T
        for t in (range(T - 1, -1, -1) if d else range(T)):
            a = layer_norm(x[t] @ w_ih.T) * g_ih
            r = layer_norm(h @ w_hh.T) * g_hh
            if b_ih is not None:
                a, r = a + b_ih, r + b_hh
            rg = torch.sigmoid(a[:, :H] + r[:, :H])
            z = torch.sigmoid(a[:, H:2 * H] + r[:, H:2 * H])
            n = torch.tanh(a[:, 2 * H:] + rg * r[:, 2 * H:])
            h_new = (1 - z) * n + z * h
            on = (lengths > t).unsqueeze(1)
            h = torch.where(on, h_new, h)
            outs[t] = torch.where(on, h_new, torch.zeros_like(h_new))
        return torch.stack(outs), h

    def forward(self, input, hx=None):
        packed = isinstance(input, PackedSequence)
        if packed:
            x, lengths = pad_packed_sequence(input)
        else:
            x = input.transpose(0, 1) if self.batch_first else input
            lengths = torch.full((x.shape[1],), x.shape[0])
        if hx is None:
            hx = x.new_zeros(self.num_layers * self.dirs, x.shape[1], self.hidden_size)
        hs = []
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.dirs):
                y, h = self._direction(x, lengths, hx[layer * self.dirs + d], layer, d)
                outs.append(y)
                hs.append(h)
            x = torch.cat(outs, dim=-1)
        if packed:
            return pack_padded_sequence(x, lengths,
                                        enforce_sorted=input.sorted_indices is None), torch.stack(hs)
        return (x.transpose(0, 1) if self.batch_first else x), torch.stack(hs)


def make_pair(*args, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    ref = LayerNormGRUReference(*args, **kw)
    new = rnnfast.GRU(*args, layer_norm=True, dtype=dtype, **kw)
    new.load_state_dict({k: v.to(dtype) for k, v in ref.state_dict().items()}, strict=True)
    return ref, new


CONFIGS = [
    dict(num_layers=1),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=1, bias=False),
    dict(num_layers=2, batch_first=True),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("with_state", [False, True])
def test_gru_matches_the_equations_float64(cfg, with_state):
    I, H, T, B = 5, 6, 7, 3
    ref, new = make_pair(I, H, **cfg)
    dirs = 2 if cfg.get("bidirectional") else 1
    x = randn(B, T, I, seed=1) if cfg.get("batch_first") else randn(T, B, I, seed=1)
    leaves = {"x": x}
    if with_state:
        leaves["h0"] = randn(cfg["num_layers"] * dirs, B, H, seed=2)
    assert_results_close(fwd_bwd(new, leaves, call_dense(False)),
                         fwd_bwd(ref, leaves, call_dense(False)), ATOL[torch.float64],
                         what=f"layer-norm GRU {cfg}")


@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_gru_packed_sequence_float64(enforce_sorted):
    lengths = [6, 4, 4, 1] if enforce_sorted else [3, 6, 1, 5]
    ref, new = make_pair(4, 5, num_layers=2, bidirectional=True)
    leaves = {"x": randn(6, 4, 4, seed=4), "h0": randn(4, 4, 5, seed=5)}
    call = call_packed(False, lengths, enforce_sorted, batch_first=False)
    assert_results_close(fwd_bwd(new, leaves, call), fwd_bwd(ref, leaves, call),
                         ATOL[torch.float64], what="layer-norm GRU packed")


@pytest.mark.parametrize("H", [1, 16, 37])
def test_gru_float32_close_to_float64_equations(H):
    """float32 against the float64 equations, at widths below, at and past a SIMD strip
    (H = 1: the c-free normalisation over 3 values)."""
    ref, new = make_pair(8, H, num_layers=2, bidirectional=True, dtype=torch.float32)
    x = randn(12, 5, 8, seed=7)
    expected = fwd_bwd(ref, {"x": x}, call_dense(False))
    actual = fwd_bwd(new, {"x": x.float()}, call_dense(False))
    oracle32 = fwd_bwd(ref.float(), {"x": x.float()}, call_dense(False))
    assert_float32_as_accurate_as_the_equations(actual, expected, oracle32,
                                                f"layer-norm GRU float32 H={H}")


def test_normalisation_is_stable_for_large_offsets():
    """Pre-activations with a large common offset (a large bias-like column in x): the
    normalisation removes it, in float32 too (a one-pass E[v^2] - E[v]^2 would lose it)."""
    torch.manual_seed(0)
    for cls, kw in ((rnnfast.GRU, {}), (rnnfast.LSTM, {"coupled_gates": False})):
        m = cls(3, 32, layer_norm=True, **kw)
        x = torch.randn(5, 4, 3)
        x[..., 0] = 300.0  # every gate row sees about 300 * w_ih[:, 0]
        with torch.no_grad():
            m.weight_ih_l0[:, 0] = 1.0 + 0.01 * torch.randn(m.weight_ih_l0.shape[0])
        m64 = cls(3, 32, layer_norm=True, dtype=torch.float64, **kw)
        m64.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
        out, _ = m(x)
        out64, _ = m64(x.double())
        torch.testing.assert_close(out.double(), out64, atol=2e-4, rtol=0)


def test_gru_cell_matches_the_equations():
    torch.manual_seed(0)
    cell = rnnfast.GRUCell(4, 5, layer_norm=True, dtype=torch.float64)
    ref = LayerNormGRUReference(4, 5)
    cell.load_state_dict({k[:-3]: v for k, v in ref.state_dict().items()}, strict=True)
    x, h = randn(3, 4, seed=8), randn(3, 5, seed=9)
    leaves = [t.clone().requires_grad_() for t in (x, h)]
    params = dict(cell.named_parameters())
    h1 = cell(leaves[0], leaves[1])
    got = torch.autograd.grad((h1 * h1).sum(), leaves + list(params.values()))
    ref_leaves = [t.clone().requires_grad_() for t in (x, h)]
    _, rh = ref(ref_leaves[0].unsqueeze(0), ref_leaves[1].unsqueeze(0))
    torch.testing.assert_close(h1, rh[0], atol=1e-12, rtol=0)
    want = torch.autograd.grad((rh[0] * rh[0]).sum(),
                               ref_leaves + [getattr(ref, n + "_l0") for n in params])
    for name, a, b in zip(["x", "h"] + list(params), got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0, msg=lambda m: f"{name}: {m}")
    # unbatched, zero state
    torch.testing.assert_close(cell(x[0]), ref(x[:1].unsqueeze(0))[1][0, 0], atol=1e-12, rtol=0)


def test_gru_gradcheck_and_second_order():
    torch.manual_seed(0)
    m = rnnfast.GRU(3, 4, num_layers=2, bidirectional=True, layer_norm=True,
                    dtype=torch.float64)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.startswith("ln_"):
                p.uniform_(0.5, 1.5)
    x = randn(4, 2, 3, seed=11).requires_grad_()
    names = [n for n, _ in m.named_parameters()]

    def f(x, *ps):
        out, h = torch.func.functional_call(m, dict(zip(names, ps)), (x,))
        return out.sum() + h.pow(2).sum()

    params = tuple(m.parameters())
    assert torch.autograd.gradcheck(f, (x,) + params)
    assert torch.autograd.gradgradcheck(f, (x,) + params)


def test_parameter_names_shapes_and_init():
    m = rnnfast.LSTM(4, 5, num_layers=2, bidirectional=True, proj_size=2, layer_norm=True)
    plain = rnnfast.LSTM(4, 5, num_layers=2, bidirectional=True, proj_size=2)
    extra = [k for k in m.state_dict() if k not in plain.state_dict()]
    assert extra == [f"ln_{n}_l{k}{s}" for k in range(2) for s in ("", "_reverse")
                     for n in ("ih_weight", "hh_weight", "c_weight", "c_bias")]
    sd = m.state_dict()
    assert sd["ln_ih_weight_l1_reverse"].shape == (20,) and sd["ln_hh_weight_l0"].shape == (20,)
    assert sd["ln_c_weight_l0"].shape == (5,) and sd["ln_c_bias_l0"].shape == (5,)
    for k in extra:  # gains 1, shifts 0
        assert torch.equal(sd[k], torch.full_like(sd[k], 0.0 if k.startswith("ln_c_bias")
                                                  else 1.0)), k
    assert "layer_norm=True" in repr(m) and "layer_norm" not in repr(plain)
    both = rnnfast.LSTM(4, 5, layer_norm=True, peephole=True, coupled_gates=True)
    assert [k for k in both.state_dict()] == [
        "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_ci_l0",
        "weight_co_l0", "ln_ih_weight_l0", "ln_hh_weight_l0", "ln_c_weight_l0", "ln_c_bias_l0"]
    assert both.ln_ih_weight_l0.shape == (15,)
    gru = rnnfast.GRU(4, 5, layer_norm=True)
    assert [k for k in gru.state_dict() if k.startswith("ln_")] == ["ln_ih_weight_l0",
                                                                   "ln_hh_weight_l0"]
    assert gru.ln_hh_weight_l0.shape == (15,) and "layer_norm=True" in repr(gru)
    cell = rnnfast.LSTMCell(4, 5, layer_norm=True)
    assert [n for n, _ in cell.named_parameters()] == [
        "weight_ih", "weight_hh", "bias_ih", "bias_hh", "ln_ih_weight", "ln_hh_weight",
        "ln_c_weight", "ln_c_bias"]
    # an nn.LSTM state_dict lacks the gains: strict loading says so
    with pytest.raises(RuntimeError, match="ln_ih_weight_l0"):
        rnnfast.LSTM(4, 5, layer_norm=True).load_state_dict(nn.LSTM(4, 5).state_dict())
    # reset_parameters keeps the normalisation's init
    with torch.no_grad():
        gru.ln_ih_weight_l0.fill_(3.0)
    gru.reset_parameters()
    assert torch.equal(gru.ln_ih_weight_l0, torch.ones(15))


def test_layer_norm_changes_the_result_and_gains_matter():
    """The option is not a no-op: at init (gains 1, shift 0) the outputs differ from the plain
    cell's with the same weights, and scaling a gain changes them again."""
    torch.manual_seed(0)
    for cls in (rnnfast.LSTM, rnnfast.GRU):
        ln = cls(4, 6, layer_norm=True)
        plain = cls(4, 6)
        plain.load_state_dict({k: v for k, v in ln.state_dict().items()
                               if not k.startswith("ln_")})
        x = torch.randn(5, 3, 4)
        a, _ = ln(x)
        assert not torch.allclose(a, plain(x)[0], atol=1e-3)
        with torch.no_grad():
            ln.ln_hh_weight_l0.mul_(2)
        assert not torch.allclose(a, ln(x)[0], atol=1e-4)


def test_reference_loop_runs_layer_norm_where_kernels_do_not(monkeypatch):
    """On a device without layer-norm kernels (CUDA today) the modules run the reference loop;
    its result is the fused kernels' (checked here by forcing that choice on the CPU)."""
    from rnnfast import _reference, modules
    torch.manual_seed(0)
    m = rnnfast.LSTM(4, 6, num_layers=2, layer_norm=True, peephole=True, dtype=torch.float64)
    x = randn(5, 3, 4, seed=3)
    fused, _ = m(x)
    monkeypatch.setattr(modules, "_layer_fn", lambda device: _reference.layer)
    loop, _ = m(x)
    torch.testing.assert_close(fused, loop, atol=1e-12, rtol=0)
