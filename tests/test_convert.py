"""rnnfast.convert(model): in-place replacement of every torch RNN module inside a model."""
import pytest
import torch
import torch.nn as nn

import rnnfast

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

    result = rnnfast.convert(model)
    assert result is model

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
    rnnfast.convert(model)
    assert isinstance(model[0], rnnfast.GRU)
    assert model[0].training and model[0].dropout == 0.5 and model[0].num_layers == 2


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
    x = torch.randn(2, 3, dtype=torch.float64) if "Cell" in cls.__name__ else \
        torch.randn(5, 2, 3, dtype=torch.float64)
    expected = m(x)
    new = rnnfast.convert(m)
    assert type(new) is FAST[cls]
    got = new(x)
    e0 = expected[0] if isinstance(expected, tuple) else expected
    g0 = got[0] if isinstance(got, tuple) else got
    torch.testing.assert_close(g0, e0, atol=1e-9, rtol=0)


def test_converted_state_dict_loads_into_torch_model():
    torch.manual_seed(0)
    src = nn.Sequential(nn.LSTM(3, 4, bidirectional=True), nn.GRUCell(3, 4))
    conv = rnnfast.convert(nn.Sequential(nn.LSTM(3, 4, bidirectional=True), nn.GRUCell(3, 4)))
    conv.load_state_dict(src.state_dict(), strict=True)
    src.load_state_dict(conv.state_dict(), strict=True)
