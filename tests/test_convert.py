"""rnnfast.convert(model): in-place replacement of every torch RNN module inside a model."""
import pytest
import torch
import torch.nn as nn

import rnnfast
from rnn_testutils import ATOL

TORCH_TYPES = (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell)
FAST = {nn.LSTM: rnnfast.LSTM, nn.GRU: rnnfast.GRU, nn.RNN: rnnfast.RNN,
        nn.LSTMCell: rnnfast.LSTMCell, nn.GRUCell: rnnfast.GRUCell, nn.RNNCell: rnnfast.RNNCell}


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.encoders = nn.Sequential(
            nn.Identity(),
            nn.ModuleList([
                nn.LSTM(6, 5, num_layers=2, bidirectional=True, batch_first=True, proj_size=3),
                nn.GRU(6, 4, bias=False),
            ]),
        )
        self.rnn = nn.RNN(6, 3, nonlinearity="relu", num_layers=2, dropout=0.3)
        self.cells = nn.ModuleList([nn.LSTMCell(6, 4), nn.GRUCell(4, 4),
                                    nn.Sequential(nn.RNNCell(4, 3, nonlinearity="tanh"))])
        self.head = nn.Linear(6 + 4 + 3 + 3, 2)

    def forward(self, x):  # x: (B, T, 4)
        e = torch.tanh(self.embed(x))
        lstm, gru = self.encoders[1]
        a, _ = lstm(e)                              # (B, T, 6)
        b, _ = gru(e.transpose(0, 1))               # (T, B, 4)
        c, _ = self.rnn(e.transpose(0, 1))          # (T, B, 3)
        hs = []
        state = None
        for t in range(e.shape[1]):
            state = self.cells[0](e[:, t], state)
            g = self.cells[1](state[0], None if not hs else hs[-1])
            hs.append(g)
        r = self.cells[2][0](hs[-1])
        feats = torch.cat([a[:, -1], b[-1], c[-1], r], dim=-1)
        return self.head(feats)


def _rnn_modules(model):
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, TORCH_TYPES) or type(m) in FAST.values()]


def _assert_same_values(new, old, what):
    """Every parameter and buffer of new (names in order, values, dtype, device, requires_grad)
    and its state_dict equal old's."""
    for kind in ("parameters", "buffers"):
        a = dict(getattr(new, f"named_{kind}")())
        b = dict(getattr(old, f"named_{kind}")())
        assert list(a) == list(b), f"{what}: {kind} {list(a)} vs {list(b)}"
        for n, t in b.items():
            assert a[n].dtype == t.dtype and a[n].device == t.device, f"{what}: {n}"
            assert a[n].requires_grad == t.requires_grad, f"{what}: {n}"
            assert torch.equal(a[n].detach(), t.detach()), f"{what}: {n} value differs"
    sa, sb = new.state_dict(), old.state_dict()
    assert list(sa) == list(sb), f"{what}: state_dict keys {list(sa)} vs {list(sb)}"
    for k in sb:
        assert torch.equal(sa[k], sb[k]), f"{what}: state_dict[{k!r}] differs"


def _flat_outputs(r):
    """Every tensor a module or cell returns (output and final states)."""
    if isinstance(r, torch.Tensor):
        return [r]
    return [t for item in r for t in _flat_outputs(item)]


def _module_input(m, dtype=torch.float64):
    if isinstance(m, (nn.RNNCellBase, rnnfast.RNNCellBase)):
        return torch.randn(2, m.input_size, dtype=dtype)
    shape = (2, 5, m.input_size) if m.batch_first else (5, 2, m.input_size)
    return torch.randn(*shape, dtype=dtype)


def _assert_same_outputs(new, old, x, what):
    with torch.no_grad():
        got, want = _flat_outputs(new(x)), _flat_outputs(old(x))
    assert len(got) == len(want), what
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, atol=ATOL[b.dtype], rtol=0,
                                   msg=lambda m, i=i: f"{what}[{i}]: {m}")


def test_convert_nested_model():
    torch.manual_seed(0)
    model = Model().double().eval()
    model.encoders[1][0].weight_hh_l1_reverse.requires_grad_(False)
    model.cells[1].bias_hh.requires_grad_(False)
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
    names_before = [(n, type(m)) for n, m in _rnn_modules(model)]
    assert len(names_before) == 6
    params_before = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
    configs_before = {n: repr(m) for n, m in _rnn_modules(model)}
    originals = dict(_rnn_modules(model))

    result = rnnfast.convert(model)
    assert result is model
    for n, new in _rnn_modules(model):
        old = originals[n]
        _assert_same_values(new, old, n)
        # the very Parameter objects (so optimizer state keyed on them carries over)
        for (pn, p), q in zip(new.named_parameters(), old.parameters()):
            assert p is q, f"{n}.{pn} is a new Parameter"
        _assert_same_outputs(new, old, _module_input(old), n)

    names_after = [(n, type(m)) for n, m in _rnn_modules(model)]
    assert [n for n, _ in names_after] == [n for n, _ in names_before]
    for (n, t_before), (_, t_after) in zip(names_before, names_after):
        assert t_after is FAST[t_before], f"{n}: {t_before.__name__} became {t_after}"
    assert {n: repr(m) for n, m in _rnn_modules(model)} == configs_before
    assert isinstance(model.embed, nn.Linear) and isinstance(model.encoders[0], nn.Identity)

    params_after = dict(model.named_parameters())
    assert list(params_after) == list(params_before)
    for n, (val, rg) in params_before.items():
        assert torch.equal(params_after[n].detach(), val), n
        assert params_after[n].requires_grad == rg, n
        assert params_after[n].dtype == torch.float64
    assert not model.training and all(not m.training for m in model.modules())

    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, atol=1e-9, rtol=0)

    # the converted model trains: gradients reach exactly the trainable parameters
    model.train()
    model(x).sum().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n


def test_convert_preserves_training_mode_and_dropout():
    torch.manual_seed(0)
    model = nn.Sequential(nn.GRU(3, 4, num_layers=2, dropout=0.5))
    old = model[0]
    rnnfast.convert(model)
    assert isinstance(model[0], rnnfast.GRU)
    assert model[0].training and model[0].dropout == 0.5 and model[0].num_layers == 2
    _assert_same_values(model[0], old, "GRU")
    # training mode with the same dropout: same masks from the same seed, so same outputs
    x = torch.randn(5, 2, 3)
    results = []
    for m in (model[0], old):
        torch.manual_seed(3)
        results.append(_flat_outputs(m(x)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=ATOL[torch.float32], rtol=0)


def test_convert_idempotent_and_leaves_other_modules():
    model = nn.Sequential(nn.Linear(3, 3), nn.LSTM(3, 4))
    rnnfast.convert(model)
    first = model[1]
    rnnfast.convert(model)
    assert model[1] is first and isinstance(first, rnnfast.LSTM)
    assert type(model[0]) is nn.Linear


@pytest.mark.parametrize("cls", TORCH_TYPES, ids=lambda c: c.__name__)
def test_convert_top_level_module(cls):
    """A bare torch RNN module cannot be replaced in place: convert returns the replacement."""
    torch.manual_seed(0)
    m = cls(3, 4).double()
    with torch.no_grad():
        for p in m.parameters():    # no two parameters of the same shape alike
            p.uniform_(-1, 1)
    new = rnnfast.convert(m)
    assert type(new) is FAST[cls]
    _assert_same_values(new, m, cls.__name__)
    _assert_same_outputs(new, m, _module_input(m), cls.__name__)


def test_converted_state_dict_loads_into_torch_model():
    torch.manual_seed(0)
    src = nn.Sequential(nn.LSTM(3, 4, bidirectional=True), nn.GRUCell(3, 4))
    conv = rnnfast.convert(nn.Sequential(nn.LSTM(3, 4, bidirectional=True), nn.GRUCell(3, 4)))
    conv.load_state_dict(src.state_dict(), strict=True)        # torch -> rnnfast
    _assert_same_values(conv, src, "torch -> rnnfast")
    with torch.no_grad():
        for p in conv.parameters():
            p.uniform_(-1, 1)
    src.load_state_dict(conv.state_dict(), strict=True)        # rnnfast -> torch
    _assert_same_values(src, conv, "rnnfast -> torch")
    x = torch.randn(5, 2, 3)
    _assert_same_outputs(conv[0], src[0], x, "LSTM")
    _assert_same_outputs(conv[1], src[1], x[0], "GRUCell")


def _hooked(kind, seed):
    """Twin torch modules (float64) with a pruning, weight-norm or spectral-norm hook: each
    computes a weight from other parameters and buffers before every call."""
    from torch.nn.utils import prune
    torch.manual_seed(seed)
    make, hook, remove = {
        "LSTM prune": (lambda: nn.LSTM(4, 5, num_layers=2),
                       lambda m: prune.l1_unstructured(m, "weight_hh_l1", 0.3),
                       lambda m: prune.remove(m, "weight_hh_l1")),
        "GRU prune bias": (lambda: nn.GRU(4, 5, bidirectional=True),
                           lambda m: prune.random_unstructured(m, "bias_ih_l0_reverse", 0.5),
                           lambda m: prune.remove(m, "bias_ih_l0_reverse")),
        "GRUCell prune": (lambda: nn.GRUCell(4, 5),
                          lambda m: prune.l1_unstructured(m, "weight_hh", 0.3),
                          lambda m: prune.remove(m, "weight_hh")),
        "LSTMCell weight_norm": (lambda: nn.LSTMCell(4, 5),
                                 lambda m: nn.utils.weight_norm(m, "weight_ih"),
                                 lambda m: nn.utils.remove_weight_norm(m, "weight_ih")),
        "RNN weight_norm": (lambda: nn.RNN(4, 5),
                            lambda m: nn.utils.weight_norm(m, "weight_hh_l0"),
                            lambda m: nn.utils.remove_weight_norm(m, "weight_hh_l0")),
        "LSTM spectral_norm": (lambda: nn.LSTM(4, 5),
                               lambda m: nn.utils.spectral_norm(m, "weight_hh_l0"),
                               lambda m: nn.utils.remove_spectral_norm(m, "weight_hh_l0")),
    }[kind]
    m = make().double()
    torch.manual_seed(seed + 1)
    hook(m)
    return m, remove


@pytest.mark.parametrize("kind", ["LSTM prune", "GRU prune bias", "GRUCell prune",
                                  "LSTMCell weight_norm", "RNN weight_norm", "LSTM spectral_norm"])
def test_convert_keeps_prune_and_norm_hooks(kind):
    """A torch module under torch.nn.utils.prune / weight_norm / spectral_norm (hooks that
    compute a weight before each call): the twin runs the same hooks on the same parameters
    and buffers, so outputs, gradients of every parameter and the state_dict's keys are
    torch's, before and after the hook's remove. (convert raised a TypeError on such a
    module, and a converted cell kept a meta weight and lost the mask.)"""
    ref, remove = _hooked(kind, 0)
    twin, _ = _hooked(kind, 0)
    twin = rnnfast.convert(twin)
    assert type(twin) is FAST[type(ref)]
    cell = isinstance(ref, nn.RNNCellBase)
    x = torch.randn(*((2, 4) if cell else (3, 2, 4)), dtype=torch.float64)

    def out(m):
        y = m(x)
        return y[0] if isinstance(y, tuple) else y

    for step in range(2):   # spectral_norm's power iteration moves its buffers each call
        yr, yt = out(ref), out(twin)
        torch.testing.assert_close(yt, yr, atol=1e-12, rtol=0)
        gr = torch.autograd.grad(yr.sum(), list(ref.parameters()))
        gt = torch.autograd.grad(yt.sum(), list(twin.parameters()))
        assert len(gt) == len(gr)
        for a, b in zip(gt, gr):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    assert list(twin.state_dict()) == list(ref.state_dict())
    remove(ref)
    remove(twin)
    assert list(dict(twin.named_parameters())) == list(dict(ref.named_parameters()))
    torch.testing.assert_close(out(twin), out(ref), atol=1e-12, rtol=0)


def test_convert_keeps_the_modules_hooks():
    """The twin runs the module's hooks (forward pre and post, full backward, load_state_dict
    pre-hook bound to the module: given the twin), and a handle taken before convert still
    removes its hook."""
    import gc
    m = nn.Sequential(nn.GRU(4, 5))
    seen = []
    m[0].register_forward_pre_hook(lambda mod, args: seen.append(("pre", type(mod))))
    post = m[0].register_forward_hook(lambda mod, args, out: seen.append(("post", type(mod))))
    m[0].register_full_backward_hook(lambda mod, gi, go: seen.append(("backward", type(mod))))
    m[0].register_load_state_dict_pre_hook(
        lambda mod, sd, prefix, *args: seen.append(("load", type(mod))))
    sd = m.state_dict()
    rnnfast.convert(m)
    gc.collect()   # the torch module is gone: its weak references with it
    x = torch.randn(3, 2, 4, requires_grad=True)
    m(x)[0].sum().backward()
    m.load_state_dict(sd)
    assert seen == [("pre", rnnfast.GRU), ("post", rnnfast.GRU), ("backward", rnnfast.GRU),
                    ("load", rnnfast.GRU)]
    seen.clear()
    post.remove()
    m(x)
    assert seen == [("pre", rnnfast.GRU)]
