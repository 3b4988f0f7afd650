"""The nn.LSTM/GRU/RNN (and cell) surface that real code touches, compared with torch."""
import copy
import io
import math

import pytest
import torch
import torch.nn as nn

import rnnfast
from rnn_testutils import (ATOL, CELL_KIND_NAMES, KIND_NAMES, call_dense, compare_modules,
                           fast_cls, is_lstm, kind_kwargs, make_pair, randn, torch_cls)

T, B, I, H = 4, 2, 3, 5

# configurations exercised for the structural checks
CONFIGS = [
    pytest.param(kind, kw, id=f"{kind}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}")
    for kind in KIND_NAMES
    for kw in [{}, dict(num_layers=2, bidirectional=True), dict(num_layers=3, bias=False),
               *([dict(num_layers=2, bidirectional=True, proj_size=2)] if kind == "LSTM" else [])]
]

ALL_KINDS = KIND_NAMES + CELL_KIND_NAMES


def _first_out(res):
    """Primary output tensor of a module call (sequence output or cell h)."""
    return res[0] if isinstance(res, tuple) else res


def _x_for(kind, dtype=torch.float64):
    if kind in CELL_KIND_NAMES:
        return randn(B, I, dtype=dtype)
    return randn(T, B, I, dtype=dtype)


def _assert_same_tensors(a, b, exact=True):
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for u, v in zip(a, b):
            _assert_same_tensors(u, v, exact)
        return
    if exact:
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, atol=ATOL[a.dtype], rtol=0)


# ------------------------------------------------------------------- parameters and state

@pytest.mark.parametrize("kind,kw", CONFIGS)
def test_named_parameters_match_torch(kind, kw):
    ref, new = make_pair(kind, I, H, **kw)
    got = [(n, tuple(p.shape), p.dtype) for n, p in new.named_parameters()]
    want = [(n, tuple(p.shape), p.dtype) for n, p in ref.named_parameters()]
    assert got == want
    assert list(new.state_dict()) == list(ref.state_dict())
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in new.parameters())


@pytest.mark.parametrize("kind", CELL_KIND_NAMES)
@pytest.mark.parametrize("bias", [True, False])
def test_cell_named_parameters_match_torch(kind, bias):
    ref, new = make_pair(kind, I, H, bias=bias)
    assert ([(n, tuple(p.shape)) for n, p in new.named_parameters()]
            == [(n, tuple(p.shape)) for n, p in ref.named_parameters()])


@pytest.mark.parametrize("kind,kw", CONFIGS)
def test_state_dict_round_trip_both_directions(kind, kw):
    torch.manual_seed(1)
    ref = torch_cls(kind)(I, H, **kind_kwargs(kind), dtype=torch.float64, **kw)
    torch.manual_seed(2)
    new = fast_cls(kind)(I, H, **kind_kwargs(kind), dtype=torch.float64, **kw)
    # rnnfast -> torch
    back = torch_cls(kind)(I, H, **kind_kwargs(kind), dtype=torch.float64, **kw)
    back.load_state_dict(new.state_dict(), strict=True)
    x = _x_for(kind)
    _assert_same_tensors(new(x), back(x), exact=False)
    # torch -> rnnfast
    new.load_state_dict(ref.state_dict(), strict=True)
    _assert_same_tensors(new(x), ref(x), exact=False)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_default_init_matches_torch_under_seed(kind):
    """Swapping nn.X for rnnfast.X in a seeded script gives the same initial weights."""
    kw = {} if kind in CELL_KIND_NAMES else dict(num_layers=2, bidirectional=True)
    torch.manual_seed(7)
    ref = torch_cls(kind)(I, H, **kind_kwargs(kind), **kw)
    torch.manual_seed(7)
    new = fast_cls(kind)(I, H, **kind_kwargs(kind), **kw)
    for (n, a), (_, b) in zip(ref.named_parameters(), new.named_parameters()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_reset_parameters(kind):
    hidden = 9
    kw = dict(proj_size=4, num_layers=2) if kind == "LSTM" else {}
    m = fast_cls(kind)(I, hidden, **kind_kwargs(kind), **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(10.0)
    assert m.reset_parameters() is None
    bound = 1.0 / math.sqrt(hidden)
    for n, p in m.named_parameters():
        assert (p.abs() <= bound).all(), f"{n} outside uniform(-{bound}, {bound})"
        assert p.std() > 0.2 * bound, f"{n} not re-initialised"


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_attributes_match_torch(kind):
    kw = dict(num_layers=2, bidirectional=True, batch_first=True, bias=False, dropout=0.25)
    if kind == "LSTM":
        kw["proj_size"] = 2
    ref, new = make_pair(kind, I, H, **kw)
    names = ["input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
             "bidirectional", "proj_size"]
    if kind.startswith("RNN"):
        names.append("nonlinearity")
    for a in names:
        assert getattr(new, a) == getattr(ref, a), a
    assert isinstance(new, nn.Module)


@pytest.mark.parametrize("kind", CELL_KIND_NAMES)
def test_cell_attributes_match_torch(kind):
    ref, new = make_pair(kind, I, H, bias=False)
    names = ["input_size", "hidden_size", "bias"] + (["nonlinearity"] if "RNN" in kind else [])
    for a in names:
        assert getattr(new, a) == getattr(ref, a), a


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_constructor_device_dtype(kind, dtype):
    m = fast_cls(kind)(I, H, **kind_kwargs(kind), device="cpu", dtype=dtype)
    for p in m.parameters():
        assert p.dtype == dtype and p.device.type == "cpu"
    out = _first_out(m(_x_for(kind, dtype)))
    assert out.dtype == dtype


# --------------------------------------------------------------------------------- repr

REPR_CASES = [
    ("LSTM", (10, 20, 2), {}),
    ("LSTM", (3, 5), dict(proj_size=2, num_layers=2, bias=False, batch_first=True, dropout=0.5,
                          bidirectional=True)),
    ("GRU", (3, 5), dict(batch_first=True)),
    ("GRU", (3, 5, 3), dict(dropout=0.1, bidirectional=True)),
    ("RNN", (3, 5), {}),
    ("RNN", (3, 5), dict(nonlinearity="relu", bias=False)),
    ("LSTMCell", (3, 4), {}),
    ("GRUCell", (3, 4), dict(bias=False)),
    ("RNNCell", (3, 4), dict(nonlinearity="relu")),
    ("RNNCell", (3, 4), {}),
]


@pytest.mark.parametrize("cls,args,kw", REPR_CASES,
                         ids=[f"{c}{a}{k}" for c, a, k in REPR_CASES])
def test_repr_matches_torch(cls, args, kw):
    assert repr(getattr(rnnfast, cls)(*args, **kw)) == repr(getattr(nn, cls)(*args, **kw))


def test_repr_example_from_spec():
    assert repr(rnnfast.LSTM(10, 20, 2)) == "LSTM(10, 20, num_layers=2)"


# -------------------------------------------------------------- flat weights / all_weights

@pytest.mark.parametrize("kind,kw", CONFIGS)
def test_flat_weights_and_all_weights(kind, kw):
    ref, new = make_pair(kind, I, H, **kw)
    assert list(new._flat_weights_names) == list(ref._flat_weights_names)
    assert len(new._flat_weights) == len(new._flat_weights_names)
    for name, w in zip(new._flat_weights_names, new._flat_weights):
        assert w is getattr(new, name), name
    # all_weights: same nesting as torch, made of the module's own parameters
    params_by_id = {id(p): n for n, p in new.named_parameters()}
    ref_names = {id(p): n for n, p in ref.named_parameters()}
    got = [[params_by_id[id(p)] for p in layer] for layer in new.all_weights]
    want = [[ref_names[id(p)] for p in layer] for layer in ref.all_weights]
    assert got == want


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_setattr_new_parameter_keeps_flat_weights_in_sync(kind):
    ref, new = make_pair(kind, I, H, num_layers=2, bidirectional=True)
    name = "weight_hh_l1_reverse"
    replacement = randn(*getattr(ref, name).shape, seed=11)
    for m in (ref, new):
        setattr(m, name, nn.Parameter(replacement.clone()))
    idx = list(new._flat_weights_names).index(name)
    assert new._flat_weights[idx] is getattr(new, name)
    assert torch.equal(new._flat_weights[idx], replacement)
    compare_modules(kind, ref, new, {"x": randn(T, B, I)}, call_dense(is_lstm(kind)),
                    torch.float64, what="after setattr")


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_weight_drop_plain_tensor_weight(kind):
    """AWD-LSTM style: the recurrent weight becomes a plain tensor computed from a raw parameter
    before each forward; gradients flow back to the raw parameter."""
    ref, new = make_pair(kind, I, H)
    mask = (randn(*ref.weight_hh_l0.shape, seed=3) > -0.5).double() / 0.7
    for m in (ref, new):
        raw = m.weight_hh_l0
        del m._parameters["weight_hh_l0"]
        m.register_parameter("weight_hh_l0_raw", nn.Parameter(raw.detach().clone()))

    def call(m, x):
        setattr(m, "weight_hh_l0", m.weight_hh_l0_raw * mask)
        out, hn = m(x)
        return {"out": out, "h_n": hn[0] if isinstance(hn, tuple) else hn}

    res = compare_modules(kind, ref, new, {"x": randn(T, B, I)}, call, torch.float64,
                          what="weight drop")[0]
    assert res["grad:param:weight_hh_l0_raw"].abs().sum() > 0


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_flatten_parameters_is_noop(kind):
    _, new = make_pair(kind, I, H, num_layers=2)
    x = randn(T, B, I)
    before = new(x)
    params = [p for p in new.parameters()]
    assert new.flatten_parameters() is None
    assert all(a is b for a, b in zip(params, new.parameters()))
    _assert_same_tensors(new(x), before)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_check_forward_args_and_permute_hidden(kind):
    ref, new = make_pair(kind, I, H, num_layers=2)
    x = randn(T, B, I)
    h = randn(2, B, H, seed=1)
    hx = (h, h.clone()) if is_lstm(kind) else h
    assert new.check_forward_args(x, hx, None) is None
    bad = (randn(2, B + 1, H), h.clone()) if is_lstm(kind) else randn(2, B + 1, H)
    with pytest.raises(RuntimeError):
        new.check_forward_args(x, bad, None)
    assert new.permute_hidden(hx, None) is hx
    perm = torch.tensor([1, 0])
    _assert_same_tensors(new.permute_hidden(hx, perm), ref.permute_hidden(hx, perm))


# ----------------------------------------------------------------- serialization / copies

@pytest.mark.parametrize("kind", ALL_KINDS)
def test_torch_save_load_weights_only(kind):
    kw = {} if kind in CELL_KIND_NAMES else dict(num_layers=2, bidirectional=True)
    if kind == "LSTM":
        kw["proj_size"] = 2
    _, m = make_pair(kind, I, H, **kw)
    m.eval()
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert type(loaded) is type(m)
    assert repr(loaded) == repr(m)
    assert not loaded.training
    x = _x_for(kind)
    _assert_same_tensors(loaded(x), m(x))
    for (n, a), (_, b) in zip(m.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_deepcopy(kind):
    _, m = make_pair(kind, I, H)
    c = copy.deepcopy(m)
    x = _x_for(kind)
    _assert_same_tensors(c(x), m(x))
    with torch.no_grad():
        next(c.parameters()).add_(1.0)
    assert not torch.equal(next(c.parameters()), next(m.parameters()))
    if kind in KIND_NAMES:  # the copy's flat weights must be its own parameters
        for name, w in zip(c._flat_weights_names, c._flat_weights):
            assert w is getattr(c, name)


# ------------------------------------------------------------------------- dtype moves

@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("how", ["double", "to"])
def test_double_and_to_float64(kind, how):
    torch.manual_seed(0)
    ref = torch_cls(kind)(I, H, **kind_kwargs(kind))
    new = fast_cls(kind)(I, H, **kind_kwargs(kind))
    new.load_state_dict(ref.state_dict())
    ref = ref.double()
    new = new.double() if how == "double" else new.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in new.parameters())
    if kind in KIND_NAMES:
        assert all(w.dtype == torch.float64 for w in new._flat_weights)
    x = _x_for(kind)
    _assert_same_tensors(new(x), ref(x), exact=False)
    # and back to float32
    new = new.float()
    out = _first_out(new(x.float()))
    assert out.dtype == torch.float32


# ------------------------------------------------------------------- torch.func

@pytest.mark.parametrize("kind", KIND_NAMES)
@pytest.mark.parametrize("which", ["all", "partial", "noncontiguous"])
def test_functional_call(kind, which):
    ref, new = make_pair(kind, I, H, num_layers=2, bidirectional=True)
    names = [n for n, _ in ref.named_parameters()]
    if which == "partial":
        names = ["weight_hh_l0", "bias_ih_l1_reverse"]
    base = {n: randn(*getattr(ref, n).shape, seed=20 + i) * 0.4 for i, n in enumerate(names)}

    def as_given(t):
        if which == "noncontiguous" and t.dim() == 2:
            return t.t().contiguous().t()  # same values, transposed strides
        return t

    x = randn(T, B, I)

    def run(m):
        params = {n: as_given(t.clone().requires_grad_()) for n, t in base.items()}
        leaves = list(params.values())
        out, hn = torch.func.functional_call(m, params, (x,))
        h = hn[0] if isinstance(hn, tuple) else hn
        loss = (out * randn(*out.shape, seed=3)).sum() + (h * randn(*h.shape, seed=4)).sum()
        grads = torch.autograd.grad(loss, leaves)
        return out.detach(), h.detach(), grads

    out_ref, h_ref, g_ref = run(ref)
    out_new, h_new, g_new = run(new)
    torch.testing.assert_close(out_new, out_ref, atol=1e-9, rtol=0)
    torch.testing.assert_close(h_new, h_ref, atol=1e-9, rtol=0)
    for n, a, b in zip(base, g_new, g_ref):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0, msg=n)

    # same as actually setting those parameters
    sd = new.state_dict()
    sd.update({n: t for n, t in base.items()})
    _, direct = make_pair(kind, I, H, num_layers=2, bidirectional=True)
    direct.load_state_dict(sd)
    torch.testing.assert_close(direct(x)[0], out_new, atol=1e-12, rtol=0)
    # and the module's own parameters are used again afterwards (torch refreshes its
    # _flat_weights lazily, at the next forward)
    _assert_same_tensors(new(x), ref(x), exact=False)
    for name, w in zip(new._flat_weights_names, new._flat_weights):
        assert w is getattr(new, name)


@pytest.mark.parametrize("kind", CELL_KIND_NAMES)
def test_cell_functional_call(kind):
    ref, new = make_pair(kind, I, H)
    params = {n: randn(*p.shape, seed=i) for i, (n, p) in enumerate(ref.named_parameters())}
    x = randn(B, I)
    _assert_same_tensors(torch.func.functional_call(new, params, (x,)),
                         torch.func.functional_call(ref, params, (x,)), exact=False)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_train_eval_flags_and_hooks(kind):
    _, new = make_pair(kind, I, H, num_layers=2, dropout=0.2)
    assert new.training
    assert new.eval() is new and not new.training
    assert new.train() is new and new.training
    seen = []
    handle = new.register_forward_hook(lambda mod, args, out: seen.append(type(out)))
    new(randn(T, B, I))
    handle.remove()
    assert seen == [tuple]


@pytest.mark.parametrize("kind", KIND_NAMES)
@pytest.mark.parametrize("kw", [{}, dict(num_layers=2, bidirectional=True)], ids=["1L", "2L-bi"])
def test_final_states_detach_in_place(kind, kw):
    """h_n (and c_n) take an in-place detach_() as nn.LSTM's do (truncated BPTT code calls it):
    they must not be views of another tensor."""
    _, new = make_pair(kind, I, H, **kw)
    x = randn(T, B, I, dtype=torch.float64, seed=1).requires_grad_()
    _, hn = new(x)
    states = hn if isinstance(hn, tuple) else (hn,)
    for s in states:
        assert s.requires_grad
        s.detach_()
        assert not s.requires_grad and s.grad_fn is None



class _Counting(nn.Module):
    """A parametrization that counts its evaluations (and scales, so that it matters)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, w):
        self.calls += 1
        return 0.5 * w


@pytest.mark.parametrize("kind", CELL_KIND_NAMES)
def test_cell_reads_a_parametrized_weight_once_per_call(kind):
    """A parametrization on a cell's weight is evaluated once per call, as torch's cells do
    (the dtype check read weight_ih through it a second time: spectral_norm then ran two power
    iterations per call, a random parametrization drew twice)."""
    from torch.nn.utils import parametrize
    pair = []
    for lib in (nn, rnnfast):
        torch.manual_seed(0)
        m = getattr(lib, torch_cls(kind).__name__)(4, 5, **kind_kwargs(kind)).double()
        counters = {n: _Counting() for n in ("weight_ih", "weight_hh")}
        for n, c in counters.items():
            parametrize.register_parametrization(m, n, c)
        pair.append((m, counters))
    x = torch.randn(3, 4, dtype=torch.float64)
    (ref, ref_counts), (got, got_counts) = pair
    for _ in range(2):
        out_r, out_g = ref(x), got(x)
    out_r = out_r[0] if isinstance(out_r, tuple) else out_r
    out_g = out_g[0] if isinstance(out_g, tuple) else out_g
    torch.testing.assert_close(out_g, out_r, atol=1e-12, rtol=0)
    # one evaluation at registration (register_parametrization checks the output), one per call
    assert {n: c.calls for n, c in ref_counts.items()} == {"weight_ih": 3, "weight_hh": 3}
    assert {n: c.calls for n, c in got_counts.items()} == {"weight_ih": 3, "weight_hh": 3}
    with pytest.raises(RuntimeError, match="input dtype .*float32.* does not match weight dtype"):
        got(x.float())


@pytest.mark.parametrize("kind", CELL_KIND_NAMES)
def test_cell_spectral_norm_in_training_matches_torch(kind):
    from torch.nn.utils import parametrizations
    mods = []
    for lib in (nn, rnnfast):
        torch.manual_seed(0)
        m = getattr(lib, torch_cls(kind).__name__)(4, 5, **kind_kwargs(kind)).double()
        parametrizations.spectral_norm(m, "weight_ih")
        mods.append(m)
    x = torch.randn(3, 4, dtype=torch.float64)
    for _ in range(3):
        outs = []
        for m in mods:
            y = m(x)
            y = y[0] if isinstance(y, tuple) else y
            outs.append((y.detach(), torch.autograd.grad(y.square().sum(),
                                                         list(m.parameters()))))
        (yr, gr), (yg, gg) = outs
        torch.testing.assert_close(yg, yr, atol=1e-12, rtol=0)
        for a, b in zip(gg, gr):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    u = [m.parametrizations.weight_ih[0]._u for m in mods]
    torch.testing.assert_close(u[1], u[0], atol=1e-12, rtol=0)


class _Scale(nn.Module):
    """A parametrization with a parameter of its own."""

    def __init__(self):
        super().__init__()
        self.s = nn.Parameter(torch.ones(20))

    def forward(self, w):
        return w * self.s


def test_reset_parameters_sets_parametrized_layer_norm_gains_and_shifts():
    """reset_parameters gives a parametrized layer-norm gain 1 and shift 0 (their originals),
    as without the parametrization; it drew them uniformly (the name did not start ln_)."""
    from torch.nn.utils import parametrize
    for m in (rnnfast.LSTM(4, 5, layer_norm=True), rnnfast.LSTMCell(4, 5, layer_norm=True)):
        sfx = "_l0" if isinstance(m, rnnfast.LSTM) else ""
        for n in (f"ln_c_weight{sfx}", f"ln_c_bias{sfx}", f"ln_ih_weight{sfx}"):
            parametrize.register_parametrization(m, n, nn.Identity())
        scale = _Scale()
        parametrize.register_parametrization(m, f"ln_hh_weight{sfx}", scale)
        m.reset_parameters()
        p = m.parametrizations
        # the parametrization's own parameter is drawn as every other one, not set to 1
        assert not torch.equal(scale.s, torch.ones(20)) and scale.s.abs().max() <= 1 / 5 ** 0.5
        assert torch.equal(getattr(p, f"ln_c_weight{sfx}").original, torch.ones(5))
        assert torch.equal(getattr(p, f"ln_c_bias{sfx}").original, torch.zeros(5))
        assert torch.equal(getattr(p, f"ln_ih_weight{sfx}").original, torch.ones(20))
