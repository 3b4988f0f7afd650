"""The LSTM variants: the coupled input-forget gate (``coupled_gates=True``), peephole
connections (``peephole=True``), layer normalisation (``layer_norm=True``) and their
combinations, on ``rnnfast.LSTM`` and ``rnnfast.LSTMCell``.

The oracle is written here from the equations, in float64 with plain torch ops (gate rows of
weight_ih / weight_hh: i, f, g, o; i, g, o when coupled):

    z = x W_ih^T + b_ih + h W_hh^T + b_hh, split into z_i, [z_f,] z_g, z_o
      layer norm: z = LN(x W_ih^T) * g_ih + LN(h W_hh^T) * g_hh + b_ih + b_hh
    peephole: z_i += w_ci * c,  z_f += w_cf * c
    i = sigmoid(z_i),  f = 1 - i if coupled else sigmoid(z_f),  g = tanh(z_g)
    c' = f * c + i * g
    peephole: z_o += w_co * c'
    h' = sigmoid(z_o) * tanh(c')       (then h' W_hr^T with proj_size)
      layer norm: h' = sigmoid(z_o) * tanh(LN(c') * g_c + b_c)

with LN(v) = (v - mean(v)) / sqrt(var(v) + 1e-5) over the features, biased variance. (CIFG:
Greff et al. 2017, "LSTM: A Search Space Odyssey"; peepholes: Gers & Schmidhuber 2000; both
are ONNX's LSTM, with input_forget=1 and with P; layer normalisation: Ba et al. 2016, as
haste's LayerNormLSTM.) The oracle holds the same parameters
as the rnnfast module (loaded with load_state_dict(strict=True)), and the two are compared on
outputs, final states and the gradients of the input, the initial states and every parameter,
as the suite's other parity tests compare against torch.nn. When onnxruntime is installed,
its LSTM is a second oracle.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import rnnfast
from rnn_testutils import ATOL, assert_results_close, call_dense, call_packed, fwd_bwd, randn
from rnnfast.ops import keep_mask


# (coupled_gates, peephole, layer_norm) of each variant
VARIANTS = [(c, p, n) for n in (False, True) for c in (False, True) for p in (False, True)
            if c or p or n]
# ONNX's LSTM has input_forget and P, but no layer normalisation
ONNX_VARIANTS = [v for v in VARIANTS if not v[2]]


def variant_id(v):
    return "+".join(n for n, on in zip(("coupled", "peephole", "ln"), v) if on)


# float64 tolerances (atol, rtol) of a variant against its equations: torch.nn's atol, and
# with layer normalisation also a relative 1e-10, as a row whose values are nearly equal
# (c_t at H = 6 here) has a tiny variance and its normalisation multiplies the gradients by up
# to 1/sqrt(1e-5): they reach about 1.5e3 in these tests, where float64's own rounding is
# about 1e-12 relative, above an absolute 1e-9.
def f64_tolerance(variant):
    return ATOL[torch.float64], (1e-10 if variant[2] else 0.0)


def layer_norm(v):
    """LN(v) over the last dimension, biased variance, eps 1e-5 (the issue's equations)."""
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    return (v - mean) / torch.sqrt(var + 1e-5)


class LSTMVariantReference(nn.Module):
    """The LSTM variants in plain torch ops, with rnnfast's parameter names and constructor."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 bidirectional=False, proj_size=0, dtype=torch.float64, coupled_gates=True,
                 peephole=False, layer_norm=False, dropout=0.0, weight_drop=0.0,
                 zoneout=(0.0, 0.0)):
        """zoneout: (p_h, p_c). In training, randomness is drawn from torch's RNG in the order
        rnnfast's module draws it: per layer and direction the dropped W_hh, then h's zoneout
        mask [T, B, S], then c's [T, B, H] (each only when its p > 0); then the dropout
        between layers."""
        super().__init__()
        self.coupled, self.peephole, self.layer_norm = coupled_gates, peephole, layer_norm
        self.dropout, self.weight_drop, self.zoneout = dropout, weight_drop, zoneout
        G = 3 if coupled_gates else 4
        self.hidden_size, self.num_layers, self.bias = hidden_size, num_layers, bias
        self.batch_first, self.proj_size = batch_first, proj_size
        self.dirs = 2 if bidirectional else 1
        state = proj_size if proj_size > 0 else hidden_size
        for layer in range(num_layers):
            for d in range(self.dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                isz = input_size if layer == 0 else state * self.dirs
                shapes = [("weight_ih", (G * hidden_size, isz)),
                          ("weight_hh", (G * hidden_size, state))]
                if bias:
                    shapes += [("bias_ih", (G * hidden_size,)), ("bias_hh", (G * hidden_size,))]
                if proj_size:
                    shapes += [("weight_hr", (proj_size, hidden_size))]
                if peephole:
                    shapes += [(n, (hidden_size,)) for n in ("weight_ci", "weight_cf", "weight_co")
                               if not (coupled_gates and n == "weight_cf")]
                if layer_norm:  # gains around 1 (not 1: their gradients must matter)
                    shapes += [("ln_ih_weight", (G * hidden_size,)),
                               ("ln_hh_weight", (G * hidden_size,)),
                               ("ln_c_weight", (hidden_size,)), ("ln_c_bias", (hidden_size,))]
                for name, shape in shapes:
                    p = torch.empty(shape, dtype=dtype).uniform_(-0.5, 0.5)
                    if name.endswith("_weight"):
                        p += 1
                    setattr(self, name + sfx, nn.Parameter(p))

    def _param(self, name, layer, d):
        return getattr(self, f"{name}_l{layer}" + ("_reverse" if d else ""), None)

    def _direction(self, x, lengths, h, c, layer, d):
        T = x.shape[0]
        w_ih, w_hh = self._param("weight_ih", layer, d), self._param("weight_hh", layer, d)
        if self.training and self.weight_drop:
            w_hh = F.dropout(w_hh, self.weight_drop, True)
        masks = []
        for p, n in zip(self.zoneout, (h.shape[-1], c.shape[-1])):
            if self.training and p:
                masks.append(keep_mask((T, x.shape[1], n), p, x.dtype))
            else:
                masks.append(torch.full((T, 1, 1), p, dtype=x.dtype))
        b_ih, b_hh = self._param("bias_ih", layer, d), self._param("bias_hh", layer, d)
        w_hr = self._param("weight_hr", layer, d)
        w_ci, w_cf, w_co = (self._param(n, layer, d) for n in ("weight_ci", "weight_cf",
                                                               "weight_co"))
        ln = [self._param(n, layer, d) for n in ("ln_ih_weight", "ln_hh_weight", "ln_c_weight",
                                                  "ln_c_bias")]
        H = self.hidden_size
        outs = [None] * T
        for t in (range(T - 1, -1, -1) if d else range(T)):
            if self.layer_norm:
                z = layer_norm(x[t] @ w_ih.T) * ln[0] + layer_norm(h @ w_hh.T) * ln[1]
            else:
                z = x[t] @ w_ih.T + h @ w_hh.T
            if b_ih is not None:
                z = z + b_ih + b_hh
            if self.coupled:
                z_i, z_g, z_o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:]
            else:
                z_i, z_f, z_g, z_o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
            if self.peephole:
                z_i = z_i + w_ci * c
                if not self.coupled:
                    z_f = z_f + w_cf * c
            i, g = torch.sigmoid(z_i), torch.tanh(z_g)
            f = 1 - i if self.coupled else torch.sigmoid(z_f)
            c_new = f * c + i * g
            if self.peephole:
                z_o = z_o + w_co * c_new
            c_out = layer_norm(c_new) * ln[2] + ln[3] if self.layer_norm else c_new
            h_new = torch.sigmoid(z_o) * torch.tanh(c_out)
            if w_hr is not None:
                h_new = h_new @ w_hr.T
            # zoneout: s_t = m s_{t-1} + (1 - m) s~_t
            h_new = masks[0][t] * h + (1 - masks[0][t]) * h_new
            c_new = masks[1][t] * c + (1 - masks[1][t]) * c_new
            on = (lengths > t).unsqueeze(1)  # steps past a sequence's end keep its state
            h, c = torch.where(on, h_new, h), torch.where(on, c_new, c)
            outs[t] = torch.where(on, h_new, torch.zeros_like(h_new))
        return torch.stack(outs), h, c

    def forward(self, input, hx=None):
        packed = isinstance(input, PackedSequence)
        if packed:
            x, lengths = pad_packed_sequence(input)  # original batch order
        else:
            x = input.transpose(0, 1) if self.batch_first else input
            lengths = torch.full((x.shape[1],), x.shape[0])
        B = x.shape[1]
        state = self.proj_size if self.proj_size > 0 else self.hidden_size
        if hx is None:
            h0 = x.new_zeros(self.num_layers * self.dirs, B, state)
            c0 = x.new_zeros(self.num_layers * self.dirs, B, self.hidden_size)
        else:
            h0, c0 = hx
        hs, cs = [], []
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.dirs):
                k = layer * self.dirs + d
                y, h, c = self._direction(x, lengths, h0[k], c0[k], layer, d)
                outs.append(y)
                hs.append(h)
                cs.append(c)
            x = torch.cat(outs, dim=-1)
            if self.training and self.dropout and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        hn = (torch.stack(hs), torch.stack(cs))
        if packed:  # packed as the input was (sorted, or with its sorting permutation)
            return pack_padded_sequence(x, lengths,
                                        enforce_sorted=input.sorted_indices is None), hn
        return (x.transpose(0, 1) if self.batch_first else x), hn


def make_pair(*args, variant=(True, False, False), dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    coupled, peephole, ln = variant
    ref = LSTMVariantReference(*args, coupled_gates=coupled, peephole=peephole, layer_norm=ln,
                               **kw)
    new = rnnfast.LSTM(*args, coupled_gates=coupled, peephole=peephole, layer_norm=ln,
                       dtype=dtype, **kw)
    new.load_state_dict({k: v.to(dtype) for k, v in ref.state_dict().items()}, strict=True)
    return ref, new


CONFIGS = [
    dict(num_layers=1),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=2, proj_size=3),
    dict(num_layers=1, bidirectional=True, proj_size=2, bias=False),
    dict(num_layers=2, batch_first=True),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("with_state", [False, True])
def test_matches_the_equations_float64(variant, cfg, with_state):
    I, H, T, B = 5, 6, 7, 3
    ref, new = make_pair(I, H, variant=variant, **cfg)
    dirs = 2 if cfg.get("bidirectional") else 1
    S = cfg.get("proj_size", 0) or H
    x = randn(B, T, I, seed=1) if cfg.get("batch_first") else randn(T, B, I, seed=1)
    leaves = {"x": x}
    if with_state:
        leaves["h0"] = randn(cfg["num_layers"] * dirs, B, S, seed=2)
        leaves["c0"] = randn(cfg["num_layers"] * dirs, B, H, seed=3)
    expected = fwd_bwd(ref, leaves, call_dense(True))
    actual = fwd_bwd(new, leaves, call_dense(True))
    atol, rtol = f64_tolerance(variant)
    assert_results_close(actual, expected, atol, rtol, what=f"{variant_id(variant)} {cfg}")


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_sequence_float64(variant, enforce_sorted):
    lengths = [6, 4, 4, 1] if enforce_sorted else [3, 6, 1, 5]
    ref, new = make_pair(4, 5, num_layers=2, bidirectional=True, proj_size=3, variant=variant)
    leaves = {"x": randn(6, 4, 4, seed=4), "h0": randn(4, 4, 3, seed=5),
              "c0": randn(4, 4, 5, seed=6)}
    call = call_packed(True, lengths, enforce_sorted, batch_first=False)
    assert_results_close(fwd_bwd(new, leaves, call), fwd_bwd(ref, leaves, call),
                         *f64_tolerance(variant), what=f"{variant_id(variant)} packed")


def assert_float32_as_accurate_as_the_equations(actual, expected, oracle32, what):
    """rnnfast in float32 against the float64 equations: within 1e-4, or, where the problem
    itself loses more in float32 (layer normalisation's gradients reach 10-60 here, and the
    equations evaluated in float32 miss their own float64 values by up to 1e-2), as accurate
    as the float32 equations (torch) up to a factor: the whole tensor's error (its norm) within
    4x theirs, and no element's error over 8x their largest. Two float32 evaluations that sum
    in different orders miss by amounts a few times apart (measured, norm / largest element:
    AVX-512 path up to 2.3 / 2.3, AVX2 2.0 / 2.8, the portable scalar path, which rounds every
    multiply and add apart, 3.1 / 4.4 on an Intel Xeon whose torch misses less than on the AMD
    EPYC where the factor was first set; one element's error is a single draw, the norm sums
    them all). A wrong kernel misses by orders of magnitude more. Every output, state and
    gradient."""
    assert sorted(actual) == sorted(expected)
    for k, e in expected.items():
        if not isinstance(e, torch.Tensor) or not e.is_floating_point():
            continue
        diff, own_diff = actual[k].double() - e, oracle32[k].double() - e
        err, own = diff.abs().max().item(), own_diff.abs().max().item()
        if err <= 1e-4:
            continue
        norm, own_norm = diff.norm().item(), own_diff.norm().item()
        assert norm <= 4 * own_norm and err <= 8 * own, (
            f"{what}: {k}: float32 error {err:.3g} (norm {norm:.3g}), the float32 equations' "
            f"{own:.3g} (norm {own_norm:.3g})")


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_float32_close_to_float64_equations(variant):
    ref, new = make_pair(16, 32, num_layers=2, bidirectional=True, dtype=torch.float32,
                         variant=variant)
    x = randn(20, 4, 16, seed=7)
    expected = fwd_bwd(ref, {"x": x}, call_dense(True))
    actual = fwd_bwd(new, {"x": x.float()}, call_dense(True))
    oracle32 = fwd_bwd(ref.float(), {"x": x.float()}, call_dense(True))
    assert_float32_as_accurate_as_the_equations(actual, expected, oracle32,
                                                f"{variant_id(variant)} float32")


def test_parameters_have_three_gate_rows_and_lstm_names():
    m = rnnfast.LSTM(4, 5, num_layers=2, bidirectional=True, proj_size=2, coupled_gates=True)
    plain = rnnfast.LSTM(4, 5, num_layers=2, bidirectional=True, proj_size=2)
    assert list(m.state_dict()) == list(plain.state_dict())
    assert m.weight_ih_l0.shape == (15, 4) and m.weight_hh_l0.shape == (15, 2)
    assert m.bias_ih_l1_reverse.shape == (15,) and m.weight_hr_l0.shape == (2, 5)
    assert m.coupled_gates is True and "coupled_gates=True" in repr(m)
    assert "coupled_gates" not in repr(plain)
    # an nn.LSTM's state_dict has 4H rows: loading it is a shape error, not a silent slice
    with pytest.raises(RuntimeError, match="size mismatch"):
        m.load_state_dict(nn.LSTM(4, 5, num_layers=2, bidirectional=True,
                                  proj_size=2).state_dict())


def test_peephole_parameters_names_shapes_and_init():
    m = rnnfast.LSTM(4, 5, num_layers=2, bidirectional=True, proj_size=2, peephole=True)
    plain = rnnfast.LSTM(4, 5, num_layers=2, bidirectional=True, proj_size=2)
    extra = [k for k in m.state_dict() if k not in plain.state_dict()]
    assert extra == [f"weight_{g}_l{k}{s}" for k in range(2) for s in ("", "_reverse")
                     for g in ("ci", "cf", "co")]
    # each layer's own parameters follow its nn.LSTM ones
    assert [k for k in m.state_dict() if k.endswith("_l0")] == [
        "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_hr_l0",
        "weight_ci_l0", "weight_cf_l0", "weight_co_l0"]
    assert all(m.state_dict()[k].shape == (5,) for k in extra)
    # initialised like the other weights: uniform in [-1/sqrt(H), 1/sqrt(H)], not constant
    bound = 5 ** -0.5
    for k in extra:
        w = m.state_dict()[k]
        assert w.abs().max() <= bound and w.std() > 0, k
    coupled = rnnfast.LSTM(4, 5, peephole=True, coupled_gates=True)
    assert [k for k in coupled.state_dict() if k.startswith("weight_c")] == [
        "weight_ci_l0", "weight_co_l0"]
    assert "peephole=True" in repr(m) and "peephole" not in repr(plain)
    # an nn.LSTM state_dict lacks the peephole weights: strict loading says so
    with pytest.raises(RuntimeError, match="weight_ci_l0"):
        rnnfast.LSTM(4, 5, peephole=True).load_state_dict(nn.LSTM(4, 5).state_dict())
    cell = rnnfast.LSTMCell(4, 5, peephole=True)
    assert [n for n, _ in cell.named_parameters()] == [
        "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ci", "weight_cf", "weight_co"]
    assert "peephole=True" in repr(cell)


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_cell_matches_the_equations(variant):
    torch.manual_seed(0)
    coupled, peephole, ln = variant
    cell = rnnfast.LSTMCell(4, 5, coupled_gates=coupled, peephole=peephole, layer_norm=ln,
                            dtype=torch.float64)
    G = 3 if coupled else 4
    assert cell.weight_ih.shape == (G * 5, 4) and cell.weight_hh.shape == (G * 5, 5)
    ref = LSTMVariantReference(4, 5, coupled_gates=coupled, peephole=peephole, layer_norm=ln)
    cell.load_state_dict({k[:-3]: v for k, v in ref.state_dict().items()}, strict=True)
    x, h, c = randn(3, 4, seed=8), randn(3, 5, seed=9), randn(3, 5, seed=10)
    h1, c1 = cell(x, (h, c))
    _, (rh, rc) = ref(x.unsqueeze(0), (h.unsqueeze(0), c.unsqueeze(0)))
    torch.testing.assert_close(h1, rh[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(c1, rc[0], atol=1e-12, rtol=0)
    h2, c2 = cell(x[0])  # unbatched, zero state
    _, (rh, rc) = ref(x[:1].unsqueeze(0))
    torch.testing.assert_close(h2, rh[0, 0], atol=1e-12, rtol=0)
    assert ("coupled_gates=True" in repr(cell)) == coupled
    # the cell's gradients, of every parameter too, against the equations'
    leaves = [t.clone().requires_grad_() for t in (x, h, c)]
    params = dict(cell.named_parameters())
    h1, c1 = cell(leaves[0], (leaves[1], leaves[2]))
    got = torch.autograd.grad((h1 * h1).sum() + c1.sum(), leaves + list(params.values()))
    ref_leaves = [t.clone().requires_grad_() for t in (x, h, c)]
    _, (rh, rc) = ref(ref_leaves[0].unsqueeze(0), (ref_leaves[1].unsqueeze(0),
                                                   ref_leaves[2].unsqueeze(0)))
    want = torch.autograd.grad((rh[0] * rh[0]).sum() + rc[0].sum(),
                               ref_leaves + [getattr(ref, n + "_l0") for n in params])
    for name, a, b in zip(["x", "h", "c"] + list(params), got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_gradcheck_and_second_order(variant):
    torch.manual_seed(0)
    coupled, peephole, ln = variant
    m = rnnfast.LSTM(3, 4, num_layers=2, proj_size=2, coupled_gates=coupled, peephole=peephole,
                     layer_norm=ln, dtype=torch.float64)
    with torch.no_grad():  # gains off 1, so that their gradients are checked in general
        for n, p in m.named_parameters():
            if n.startswith("ln_"):
                p.uniform_(0.5, 1.5)
    x = randn(4, 2, 3, seed=11).requires_grad_()
    params = tuple(m.parameters())

    def f(x, *ps):
        out, (h, c) = torch.func.functional_call(
            m, dict(zip([n for n, _ in m.named_parameters()], ps)), (x,))
        return out.sum() + h.pow(2).sum() + c.sum()

    assert torch.autograd.gradcheck(f, (x,) + params)
    # second order through the fused op's backward (create_graph=True path)
    out, (h, c) = m(x)
    (gx,) = torch.autograd.grad((out * out).sum() + c.sum(), x, create_graph=True)
    (ggx,) = torch.autograd.grad(gx.sum(), x)
    ref = LSTMVariantReference(3, 4, num_layers=2, proj_size=2, coupled_gates=coupled,
                               peephole=peephole, layer_norm=ln)
    ref.load_state_dict(m.state_dict())
    out_r, (_, c_r) = ref(x)
    (gx_r,) = torch.autograd.grad((out_r * out_r).sum() + c_r.sum(), x, create_graph=True)
    (ggx_r,) = torch.autograd.grad(gx_r.sum(), x)
    torch.testing.assert_close(gx, gx_r, atol=1e-10, rtol=0)
    torch.testing.assert_close(ggx, ggx_r, atol=1e-10, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS + [(False, False, False)],
                         ids=lambda v: variant_id(v) or "plain")
@pytest.mark.parametrize("training", [False, True])
def test_every_option_at_once(variant, training):
    """Coupled gates and/or peepholes with a projection, two bidirectional layers, batch_first,
    dropout between layers, weight_drop and zoneout (p_c, p_h), in training (the same random
    draws as the equations') and eval: outputs, states and every gradient, float64."""
    coupled, peephole, ln = variant
    kw = dict(num_layers=2, bidirectional=True, proj_size=3, batch_first=True, dropout=0.3)
    torch.manual_seed(0)
    ref = LSTMVariantReference(5, 6, coupled_gates=coupled, peephole=peephole, layer_norm=ln,
                               weight_drop=0.25, zoneout=(0.3, 0.2), **kw)
    new = rnnfast.LSTM(5, 6, coupled_gates=coupled, peephole=peephole, layer_norm=ln,
                       weight_drop=0.25, zoneout=(0.2, 0.3), dtype=torch.float64, **kw)
    new.load_state_dict(ref.state_dict(), strict=True)
    ref.train(training)
    new.train(training)
    leaves = {"x": randn(3, 7, 5, seed=12), "h0": randn(4, 3, 3, seed=13),
              "c0": randn(4, 3, 6, seed=14)}
    torch.manual_seed(21)
    actual = fwd_bwd(new, leaves, call_dense(True))
    torch.manual_seed(21)
    expected = fwd_bwd(ref, leaves, call_dense(True))
    assert_results_close(actual, expected, *f64_tolerance(variant),
                         what=f"{variant_id(variant)} all options, training={training}")


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_compile_fullgraph(variant):
    torch.manual_seed(0)
    m = rnnfast.LSTM(4, 6, num_layers=2, coupled_gates=variant[0], peephole=variant[1],
                     layer_norm=variant[2])
    x = torch.randn(5, 3, 4)
    expected, _ = m(x)
    torch._dynamo.reset()  # a fresh recompile budget (the suite compiles many modules)
    out, _ = torch.compile(m, fullgraph=True, backend="eager")(x)
    torch.testing.assert_close(out, expected)


def test_dropout_between_layers_is_applied_in_training():
    torch.manual_seed(0)
    m = rnnfast.LSTM(4, 6, num_layers=2, dropout=0.5, coupled_gates=True)
    x = torch.randn(5, 3, 4)
    m.eval()
    a, _ = m(x)
    b, _ = m(x)
    torch.testing.assert_close(a, b)  # no dropout in eval
    m.train()
    torch.manual_seed(1)
    c, _ = m(x)
    assert not torch.allclose(a, c)


def test_bad_variant_arguments():
    with pytest.raises(TypeError, match="coupled_gates"):
        rnnfast.LSTM(4, 5, coupled_gates=1)
    with pytest.raises(TypeError, match="coupled_gates"):
        rnnfast.GRU(4, 5, coupled_gates=True)
    with pytest.raises(TypeError, match="peephole"):
        rnnfast.LSTM(4, 5, peephole="yes")
    with pytest.raises(TypeError, match="peephole"):
        rnnfast.LSTMCell(4, 5, peephole=None)
    with pytest.raises(TypeError, match="peephole"):
        rnnfast.GRU(4, 5, peephole=True)
    with pytest.raises(TypeError, match="layer_norm"):
        rnnfast.LSTM(4, 5, layer_norm=1)
    with pytest.raises(TypeError, match="layer_norm"):
        rnnfast.GRUCell(4, 5, layer_norm="yes")
    with pytest.raises(TypeError, match="layer_norm"):
        rnnfast.RNN(4, 5, layer_norm=True)


def _onnx_lstm(model: rnnfast.LSTM):
    """An ONNX model of `model` (1 layer, unidirectional): an ONNX LSTM, whose gate row order
    is i, o, f, c, with input_forget=1 for coupled gates (their f rows, unused, are zeros)
    and the peephole weights as its P input (order i, o, f)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    H = model.hidden_size
    coupled, peephole = model.coupled_gates, model.peephole

    def iofc(w):  # rnnfast rows i, f, g, o or i, g, o -> ONNX rows i, o, f, c
        if coupled:
            i, g, o = w.detach().double().split(H)
            f = torch.zeros_like(i)
        else:
            i, f, g, o = w.detach().double().split(H)
        return torch.cat([i, o, f, g]).float().numpy()[None]

    W, R = iofc(model.weight_ih_l0), iofc(model.weight_hh_l0)
    Bias = torch.cat([torch.from_numpy(iofc(model.bias_ih_l0)[0]),
                      torch.from_numpy(iofc(model.bias_hh_l0)[0])]).numpy()[None]
    initializers = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"),
                    numpy_helper.from_array(Bias, "B")]
    inputs = ["X", "W", "R", "B"]
    if peephole:
        w_ci, w_co = model.weight_ci_l0.detach(), model.weight_co_l0.detach()
        w_cf = torch.zeros_like(w_ci) if coupled else model.weight_cf_l0.detach()
        P = torch.cat([w_ci, w_co, w_cf]).float().numpy()[None]
        initializers.append(numpy_helper.from_array(P, "P"))
        inputs += ["", "", "", "P"]  # sequence_lens, initial_h, initial_c absent
    node = helper.make_node("LSTM", inputs, ["Y", "Y_h", "Y_c"], hidden_size=H,
                            input_forget=int(coupled))
    graph = helper.make_graph(
        [node], "lstm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y", "Y_h", "Y_c")],
        initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.parametrize("variant", ONNX_VARIANTS, ids=variant_id)
def test_matches_onnxruntime(variant):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = rnnfast.LSTM(5, 8, coupled_gates=variant[0], peephole=variant[1])
    with torch.no_grad():  # peepholes large enough to matter
        for n, p in m.named_parameters():
            if n.startswith("weight_c"):
                p.uniform_(-1, 1)
    session = ort.InferenceSession(_onnx_lstm(m).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = torch.randn(9, 3, 5)
    y, y_h, y_c = session.run(None, {"X": x.numpy()})
    with torch.no_grad():
        out, (h, c) = m(x)
    torch.testing.assert_close(out, torch.from_numpy(y)[:, 0], atol=2e-5, rtol=0)
    torch.testing.assert_close(h, torch.from_numpy(y_h), atol=2e-5, rtol=0)
    torch.testing.assert_close(c, torch.from_numpy(y_c), atol=2e-5, rtol=0)
