"""RNNLM: shapes, state handling, weight tying, parity with the torch backend, the
profiler showing rnnfast's ops, save/load, argument errors."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import rnnfast
from rnnfast.models import RNNLM, detach_state, load_lm, save_lm
from rnnfast.text import CharTokenizer

V, E, H = 13, 6, 8


def _ids(B=3, T=7, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
def test_shapes_and_state(cell, layers):
    torch.manual_seed(0)
    model = RNNLM(V, E, H, layers, cell=cell)
    rnn_cls = rnnfast.LSTM if cell == "lstm" else rnnfast.GRU
    assert type(model.rnn) is rnn_cls and model.rnn.batch_first
    ids = _ids()
    logits, state = model(ids)
    assert logits.shape == (3, 7, V)
    zero = model.init_state(3)
    if cell == "lstm":
        assert isinstance(state, tuple) and [s.shape for s in state] == [(layers, 3, H)] * 2
        assert all(float(z.abs().sum()) == 0 for z in zero)
    else:
        assert state.shape == (layers, 3, H)
    # None and an explicit zero state agree; running in two chunks carrying the state
    # equals one run
    torch.testing.assert_close(model(ids, zero)[0], logits)
    first, mid = model(ids[:, :3])
    second, end = model(ids[:, 3:], mid)
    torch.testing.assert_close(torch.cat([first, second], 1), logits)
    for a, b in zip(torch.utils._pytree.tree_leaves(end), torch.utils._pytree.tree_leaves(state)):
        torch.testing.assert_close(a, b)


def test_init_state_device_dtype_and_detach():
    model = RNNLM(V, E, H, 2).double()
    h, c = model.init_state(4)
    assert h.dtype == torch.float64 and h.shape == (2, 4, H)
    h, c = model.init_state(4, dtype=torch.float32, device="cpu")
    assert h.dtype == torch.float32
    _, state = model(_ids())
    assert state[0].requires_grad
    detached = detach_state(state)
    assert type(detached) is tuple and not any(s.requires_grad for s in detached)
    assert model.detach_state(None) is None
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        model.init_state(0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_matches_torch_backend(cell):
    torch.manual_seed(0)
    model = RNNLM(V, E, H, 2, cell=cell).double()
    twin = model.twin("torch")
    assert isinstance(twin.rnn, (torch.nn.LSTM, torch.nn.GRU))
    assert model.state_dict().keys() == twin.state_dict().keys()
    ids = _ids()
    out, state = model(ids)
    ref, ref_state = twin(ids)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    ref.sum().backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_tie_weights():
    model = RNNLM(V, H, H, tie_weights=True)
    assert model.decoder.weight is model.embedding.weight
    assert len(list(model.parameters())) == len(list(RNNLM(V, H, H).parameters())) - 1
    twin = model.twin("torch")
    assert twin.decoder.weight is twin.embedding.weight
    with pytest.raises(ValueError, match=r"embed_size == hidden_size; got embed_size=6, "
                                         r"hidden_size=8"):
        RNNLM(V, 6, 8, tie_weights=True)


def test_dropout_between_layers_and_on_output():
    model = RNNLM(V, E, H, 2, dropout=0.5)
    assert model.rnn.dropout == 0.5 and model.drop.p == 0.5
    single = RNNLM(V, E, H, 1, dropout=0.5)       # no inter-layer dropout (and no warning)
    assert single.rnn.dropout == 0.0 and single.drop.p == 0.5
    ids = _ids()
    model.eval()
    torch.testing.assert_close(model(ids)[0], model(ids)[0])
    model.train()
    torch.manual_seed(1)
    a = model(ids)[0]
    torch.manual_seed(2)
    assert not torch.equal(a, model(ids)[0])


def _profile_names(fn):
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events()}


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_profiler_shows_rnnfast_ops(cell):
    model = RNNLM(V, E, H, 2, cell=cell)
    ids = _ids()

    def step():
        logits, _ = model(ids)
        F.cross_entropy(logits.reshape(-1, V), ids.reshape(-1)).backward()

    names = _profile_names(step)
    ours = {n for n in names if n.startswith("rnnfast::")}
    assert any("backward" in n for n in ours) and any("backward" not in n for n in ours), ours
    assert not [n for n in names if n.startswith(("aten::lstm", "aten::gru"))]


def test_one_training_step_lowers_loss():
    torch.manual_seed(0)
    model = RNNLM(V, E, H)
    ids = _ids(4, 20)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(5):
        logits, _ = model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_save_and_load(tmp_path):
    torch.manual_seed(0)
    tok = CharTokenizer.from_text("abcdefghijk")
    model = RNNLM(tok.vocab_size, E, H, 2, cell="gru")
    save_lm(tmp_path / "lm", model, tok, note="hi")
    config = json.loads((tmp_path / "lm" / "config.json").read_text())
    assert config["model"]["cell"] == "gru" and config["meta"] == {"note": "hi"}
    state = torch.load(tmp_path / "lm" / "model.pt", weights_only=True)
    assert state.keys() == model.state_dict().keys()
    loaded, loaded_tok, meta = load_lm(tmp_path / "lm")
    assert loaded_tok == tok and meta == {"note": "hi"} and not loaded.training
    ids = torch.tensor([tok.encode("abcabc")])
    torch.testing.assert_close(loaded(ids)[0], model(ids)[0])
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        load_lm(tmp_path / "nothing")


def test_argument_errors():
    with pytest.raises(ValueError, match="cell must be one of"):
        RNNLM(V, E, H, cell="rnn")
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        RNNLM(13.0, E, H)
    with pytest.raises(ValueError, match="num_layers must be a positive int, got 0"):
        RNNLM(V, E, H, 0)
    with pytest.raises(ValueError, match="dropout must be a number in"):
        RNNLM(V, E, H, dropout=1.0)
    with pytest.raises(ValueError, match="backend must be one of"):
        RNNLM(V, E, H, backend="cudnn")
    model = RNNLM(V, E, H)
    with pytest.raises(TypeError, match="integer tensor"):
        model(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="torch.Tensor of token ids, got list"):
        model([[1, 2]])
    with pytest.raises(ValueError, match=r"2-D \[batch, time\]"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="token id 13, outside"):
        model(torch.tensor([[1, 13]]))
    with pytest.raises(ValueError, match="at least one token"):
        model(torch.zeros(2, 0, dtype=torch.long))
