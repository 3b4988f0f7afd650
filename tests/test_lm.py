"""RNNLM: shapes, state handling, weight tying, parity with the torch backend, the
profiler showing rnnfast's ops, save/load, argument errors, dropout/weight_drop/zoneout set
after construction; and that ``import rnnfast`` loads none of rnnfast.lm."""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import rnnfast
from rnnfast.lm import RNNLM, CharTokenizer, detach_state, load_lm, save_lm

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


def _torch_lm(model):
    """The network RNNLM describes (embedding -> stacked recurrent layer with inter-layer
    dropout -> dropout -> linear), assembled here from torch.nn modules holding copies of the
    model's values: an oracle that shares no code with RNNLM."""
    p = model.dropout
    rnn_cls = torch.nn.LSTM if model.cell == "lstm" else torch.nn.GRU
    emb = torch.nn.Embedding(model.vocab_size, model.embed_size)
    rnn = rnn_cls(model.embed_size, model.hidden_size, model.num_layers, batch_first=True,
                  dropout=p if model.num_layers > 1 else 0.0)
    drop = torch.nn.Dropout(p)
    dec = torch.nn.Linear(model.hidden_size, model.vocab_size)
    parts = torch.nn.ModuleDict(dict(emb=emb, rnn=rnn, drop=drop, dec=dec)).double()
    if model.tie_weights:
        dec.weight = emb.weight
    with torch.no_grad():
        emb.weight.copy_(model.embedding.weight)
        dec.weight.copy_(model.decoder.weight)
        dec.bias.copy_(model.decoder.bias)
        for name, value in model.rnn.state_dict().items():
            getattr(rnn, name).copy_(value)
    parts.train(model.training)

    def forward(ids, state=None):
        out, state = rnn(emb(ids), state)
        return dec(drop(out)), state

    return parts, forward


def _assert_same_run(model, ref_parts, ref_forward, ids, state=None, seed=None):
    """Logits, final state and every parameter gradient of model vs the torch oracle."""
    rename = {"emb.": "embedding.", "dec.": "decoder.", "rnn.": "rnn."}
    results = []
    for named, fwd in ((dict(model.named_parameters()), model),
                       ({rename[n[:4]] + n[4:]: p for n, p in ref_parts.named_parameters()},
                        ref_forward)):
        if seed is not None:
            torch.manual_seed(seed)
        logits, st = fwd(ids, state)
        states = list(st) if isinstance(st, tuple) else [st]
        loss = (logits * torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype)
                .view_as(logits)).sum() + sum(s.sum() for s in states)
        names = sorted(named)
        grads = torch.autograd.grad(loss, [named[n] for n in names])
        results.append({"logits": logits, **{f"state{i}": s for i, s in enumerate(states)},
                        **{f"grad:{n}": g for n, g in zip(names, grads)}})
    mine, ref = results
    assert sorted(mine) == sorted(ref)
    for k in ref:
        torch.testing.assert_close(mine[k], ref[k], atol=1e-9, rtol=0,
                                   msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_matches_torch_modules(cell, tie):
    """Logits, states and gradients against the same network built from torch.nn (float64),
    from a zero state and from a given one; and twin("torch") has the same state_dict."""
    torch.manual_seed(0)
    model = RNNLM(V, H, H, 2, cell=cell, tie_weights=tie).double()
    with torch.no_grad():
        model.decoder.bias.uniform_(-0.5, 0.5)    # nonzero, so a lost bias shows
    ref_parts, ref_forward = _torch_lm(model)
    ids = _ids()
    _assert_same_run(model, ref_parts, ref_forward, ids)
    state = model.init_state(3)
    state = tuple(torch.randn_like(s) for s in state) if cell == "lstm" else torch.randn_like(state)
    _assert_same_run(model, ref_parts, ref_forward, ids, state)
    twin = model.twin("torch")
    assert isinstance(twin.rnn, (torch.nn.LSTM, torch.nn.GRU))
    assert model.state_dict().keys() == twin.state_dict().keys()


def test_tie_weights():
    model = RNNLM(V, H, H, tie_weights=True)
    assert model.decoder.weight is model.embedding.weight
    assert len(list(model.parameters())) == len(list(RNNLM(V, H, H).parameters())) - 1
    twin = model.twin("torch")
    assert twin.decoder.weight is twin.embedding.weight
    with pytest.raises(ValueError, match=r"embed_size == hidden_size; got embed_size=6, "
                                         r"hidden_size=8"):
        RNNLM(V, 6, 8, tie_weights=True)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_dropout_between_layers_and_on_output(cell):
    """dropout=p is applied between the recurrent layers and to the last layer's output (before
    the decoder), in training mode only. Checked two ways:
    * against the torch.nn oracle under the same seed (torch's inter-layer dropout draws its mask
      from the same generator, in the same order, as rnnfast's), in train and in eval mode;
    * without relying on the generator: the decoder's input is the recurrent output with
      some units zeroed and the others scaled by 1/(1-p); the recurrent output itself
      changes in training mode with two layers (inter-layer dropout) but not with one, and
      its last step stays equal to the last layer's final state (no dropout after it)."""
    p = 0.5
    model = RNNLM(V, E, H, 2, cell=cell, dropout=p).double()
    assert model.rnn.dropout == p and model.drop.p == p
    single = RNNLM(V, E, H, 1, cell=cell, dropout=p).double()   # no inter-layer dropout
    assert single.rnn.dropout == 0.0 and single.drop.p == p
    ids = _ids()
    for m in (model, single):
        for train in (True, False):
            m.train(train)
            parts, fwd = _torch_lm(m)
            for seed in (1, 2):
                _assert_same_run(m, parts, fwd, ids, seed=seed)

    def captured(m, train, seed):
        m.train(train)
        seen = {}
        hooks = [m.rnn.register_forward_hook(lambda mod, i, o: seen.__setitem__("rnn", o)),
                 m.decoder.register_forward_pre_hook(
                     lambda mod, i: seen.__setitem__("dec", i[0]))]
        torch.manual_seed(seed)
        try:
            m(ids)
        finally:
            for h in hooks:
                h.remove()
        out, state = seen["rnn"]
        h_last = (state[0] if isinstance(state, tuple) else state)[-1]
        # the last layer's output at the last step is its final state: nothing in between
        assert torch.equal(out[:, -1], h_last), "dropout applied after the last layer"
        return out.detach(), seen["dec"].detach()

    for m, inter_layer in ((model, True), (single, False)):
        rnn_eval, dec_eval = captured(m, False, 0)
        assert torch.equal(dec_eval, rnn_eval), "dropout on the output in eval mode"
        rnn_train, dec_train = captured(m, True, 3)
        kept = dec_train != 0
        assert 0 < kept.float().mean() < 1, "output dropout zeroed nothing or everything"
        torch.testing.assert_close(dec_train, torch.where(kept, rnn_train / (1 - p), 0.0),
                                   atol=1e-12, rtol=0)
        assert torch.equal(rnn_train, rnn_eval) is not inter_layer, (
            "inter-layer dropout " + ("missing" if inter_layer else "applied to one layer"))


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


def test_variants_peephole_and_weight_drop(tmp_path):
    """RNNLM(peephole=True, weight_drop=p): the LSTM variant underneath, kept by config and
    save/load; torch's backend has neither and says so."""
    torch.manual_seed(0)
    tok = CharTokenizer.from_text("abcdefghijk")
    model = RNNLM(tok.vocab_size, E, H, 2, peephole=True, weight_drop=0.25,
                  zoneout=(0.1, 0.2))
    assert model.rnn.peephole and model.rnn.weight_drop == 0.25
    assert model.rnn.zoneout == (0.1, 0.2)
    assert "rnn.weight_ci_l1" in dict(model.named_parameters())
    assert "peephole=True" in repr(model) and "weight_drop=0.25" in repr(model)
    ids = torch.tensor([tok.encode("abcabcab")])
    model.train()
    torch.manual_seed(1)
    a = model(ids)[0]
    torch.manual_seed(2)
    assert not torch.allclose(a, model(ids)[0])  # a new DropConnect mask per call
    model.eval()
    save_lm(tmp_path / "lm", model, tok)
    loaded, _, _ = load_lm(tmp_path / "lm")
    assert loaded.peephole and loaded.weight_drop == 0.25 and loaded.zoneout == (0.1, 0.2)
    torch.testing.assert_close(loaded(ids)[0], model(ids)[0])
    with pytest.raises(ValueError, match="backend='torch' has no peephole"):
        model.twin("torch")
    with pytest.raises(ValueError, match="peephole=True needs cell='lstm'"):
        RNNLM(V, E, H, cell="gru", peephole=True)
    with pytest.raises(ValueError, match="weight_drop"):
        RNNLM(V, E, H, weight_drop=1.5)


def _train_logits(model, ids, seed):
    model.train()
    torch.manual_seed(seed)
    return model(ids)[0].detach()


@pytest.mark.parametrize("cell, name, value", [
    ("lstm", "dropout", 0.5), ("gru", "dropout", 0.5),
    ("lstm", "weight_drop", 0.3), ("gru", "weight_drop", 0.3),
    ("lstm", "zoneout", 0.2), ("gru", "zoneout", 0.2), ("lstm", "zoneout", (0.1, 0.3))])
def test_option_set_after_construction_reaches_forward(cell, name, value):
    """dropout, weight_drop and zoneout set on a built model are what forward uses: in
    training, under the same seed, the logits equal those of a model built with that value
    (same state_dict) and differ from before; config and the attribute agree with that model's;
    set back to 0 the model computes as before."""
    torch.manual_seed(0)
    model = RNNLM(V, E, H, 2, cell=cell).double()
    ids = _ids()
    before = _train_logits(model, ids, 5)
    setattr(model, name, value)
    built = RNNLM(V, E, H, 2, cell=cell, **{name: value}).double()
    built.load_state_dict(model.state_dict())
    got = _train_logits(model, ids, 5)
    torch.testing.assert_close(got, _train_logits(built, ids, 5), atol=0, rtol=0)
    assert not torch.allclose(got, before), f"{name}={value!r} set on the model had no effect"
    assert getattr(model, name) == getattr(built, name) == value
    assert model.config == built.config
    setattr(model, name, 0.0)
    torch.testing.assert_close(_train_logits(model, ids, 5), before, atol=0, rtol=0)


@pytest.mark.parametrize("layers", [1, 2])
def test_dropout_set_after_construction_goes_to_both_places(layers):
    """lm.dropout = p sets the output dropout and, with more than one layer only, the
    inter-layer dropout (one layer: no inter-layer dropout and no torch warning about it)."""
    model = RNNLM(V, E, H, layers)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.dropout = 0.4
    assert model.dropout == model.drop.p == 0.4 and model.config["dropout"] == 0.4
    assert model.rnn.dropout == (0.4 if layers > 1 else 0.0)


def test_config_follows_changes_made_on_the_recurrent_module(tmp_path):
    """A value set on lm.rnn (the single source of truth) is what lm reports: the attribute,
    config (JSON-serialisable), repr, RNNLM(**config), twin and save/load rebuild it."""
    torch.manual_seed(0)
    tok = CharTokenizer.from_text("abcdefghijk")
    model = RNNLM(tok.vocab_size, E, H, 2)
    model.rnn.zoneout = (0.1, 0.2)
    model.rnn.weight_drop = 0.25
    assert model.zoneout == (0.1, 0.2) and model.weight_drop == 0.25
    config = model.config
    assert config["zoneout"] == (0.1, 0.2) and config["weight_drop"] == 0.25
    assert json.loads(json.dumps(config))["zoneout"] == [0.1, 0.2]
    assert "zoneout=(0.1, 0.2)" in repr(model) and "weight_drop=0.25" in repr(model)
    rebuilt = RNNLM(**config)
    assert rebuilt.rnn.zoneout == (0.1, 0.2) and rebuilt.rnn.weight_drop == 0.25
    twin = model.twin("rnnfast")
    assert twin.zoneout == (0.1, 0.2) and twin.weight_drop == 0.25
    save_lm(tmp_path / "lm", model, tok)
    loaded, _, _ = load_lm(tmp_path / "lm")
    assert loaded.zoneout == (0.1, 0.2) and loaded.rnn.zoneout == (0.1, 0.2)
    assert loaded.weight_drop == 0.25 and loaded.config == config
    model.zoneout = [0.3, 0.4]      # a list (as JSON gives it) is kept as a pair
    assert model.zoneout == model.rnn.zoneout == (0.3, 0.4)
    assert RNNLM(**model.config).zoneout == (0.3, 0.4)


def test_invalid_option_set_after_construction_raises_and_changes_nothing():
    """Values the constructor refuses are refused when set, with its messages, and leave the
    model as it was."""
    model = RNNLM(V, E, H, 2, dropout=0.1, weight_drop=0.2, zoneout=0.3)
    for name, value, match in [
            ("dropout", 1.0, r"dropout must be a number in \[0, 1\), got 1.0"),
            ("dropout", -0.1, r"dropout must be a number in \[0, 1\), got -0.1"),
            ("dropout", True, r"dropout must be a number in \[0, 1\), got True"),
            ("dropout", "0.5", r"dropout must be a number in \[0, 1\), got '0.5'"),
            ("weight_drop", 1.5, r"weight_drop should be a number in range \[0, 1\) .*got 1.5"),
            ("weight_drop", -0.2, r"weight_drop should be a number in range \[0, 1\)"),
            ("weight_drop", True, r"weight_drop should be a number in range \[0, 1\)"),
            ("zoneout", 1.5, r"zoneout should be a probability in \[0, 1\].*got 1.5"),
            ("zoneout", (0.1, 0.2, 0.3), r"zoneout should be a probability or a pair"),
            ("zoneout", "0.2", r"zoneout should be a probability")]:
        with pytest.raises(ValueError, match=match):
            setattr(model, name, value)
        assert (model.dropout, model.weight_drop, model.zoneout) == (0.1, 0.2, 0.3), name
        assert (model.drop.p, model.rnn.dropout, model.rnn.weight_drop, model.rnn.zoneout) == (
            0.1, 0.1, 0.2, 0.3), name
    gru = RNNLM(V, E, H, cell="gru")
    with pytest.raises(ValueError, match=r"RNNLM: zoneout should be a probability in \[0, 1\], "
                                         r"got \(0.1, 0.2\)"):
        gru.zoneout = (0.1, 0.2)     # a pair (p_c, p_h) is for LSTM only
    assert gru.zoneout == 0.0
    # the constructor accepts what the setters accept, and refuses what they refuse
    for name, value in [("weight_drop", None), ("weight_drop", False), ("zoneout", None),
                        ("zoneout", "0.2")]:
        with pytest.raises(ValueError, match=f"{name} should be a"):
            RNNLM(V, E, H, **{name: value})
    with pytest.raises(ValueError, match="zoneout should be a probability in"):
        RNNLM(V, E, H, cell="gru", zoneout=(0, 0))
    # numpy numbers are numbers, stored as floats (the config stays JSON)
    m = RNNLM(V, E, H, weight_drop=np.float64(0.1), zoneout=(np.float32(0.25), 0.5))
    assert type(m.weight_drop) is float and m.zoneout == (0.25, 0.5)
    m.zoneout = np.float64(0.2)
    assert type(m.zoneout) is float and json.loads(json.dumps(m.config))["zoneout"] == 0.2


def test_config_refuses_an_inter_layer_dropout_set_apart():
    """One dropout argument is both the output's and the inter-layer one: a model whose
    rnn.dropout was set on its own has no config (twin and save would rebuild another model),
    so config raises, naming both values; setting the model's dropout makes them one again."""
    model = RNNLM(V, E, H, 2, dropout=0.2)
    model.rnn.dropout = 0.5
    with pytest.raises(ValueError, match=r"rnn.dropout = 0.5 differs from drop.p = 0.2"):
        model.config
    with pytest.raises(ValueError, match=r"rnn.dropout = 0.5"):
        model.twin("rnnfast")
    model.dropout = 0.3
    assert model.config["dropout"] == 0.3 and model.twin("rnnfast").rnn.dropout == 0.3
    single = RNNLM(V, E, H, 1, dropout=0.2)   # one layer: rnn.dropout is not used
    assert single.config["dropout"] == 0.2


def test_torch_backend_options_set_after_construction():
    """backend='torch': weight_drop and zoneout read 0.0, setting them on raises the
    constructor's error (off is accepted), dropout set on the model reaches torch's module
    and forward (equal to a model built with it, under the same seed)."""
    torch.manual_seed(0)
    model = RNNLM(V, E, H, 2, backend="torch").double()
    assert model.weight_drop == 0.0 and model.zoneout == 0.0
    with pytest.raises(ValueError, match="backend='torch' has no weight_drop"):
        model.weight_drop = 0.3
    with pytest.raises(ValueError, match="backend='torch' has no zoneout"):
        model.zoneout = 0.2
    with pytest.raises(ValueError, match="backend='torch' has no zoneout"):
        model.zoneout = (0.1, 0.2)
    for name, value in [("weight_drop", ""), ("weight_drop", None), ("zoneout", None)]:
        with pytest.raises(ValueError, match=f"{name} should be a"):
            setattr(model, name, value)       # checked on this backend too
    model.weight_drop = 0.0
    model.zoneout = (0, 0)
    assert model.weight_drop == 0.0 and model.zoneout == 0.0
    assert not hasattr(model.rnn, "weight_drop") and not hasattr(model.rnn, "zoneout")
    ids = _ids()
    before = _train_logits(model, ids, 5)
    model.dropout = 0.5
    assert model.rnn.dropout == model.drop.p == 0.5
    built = RNNLM(V, E, H, 2, dropout=0.5, backend="torch").double()
    built.load_state_dict(model.state_dict())
    got = _train_logits(model, ids, 5)
    torch.testing.assert_close(got, _train_logits(built, ids, 5), atol=0, rtol=0)
    assert not torch.allclose(got, before)
    assert model.config == built.config
    assert RNNLM(**model.config).config == model.config
    assert model.twin("rnnfast").dropout == 0.5


def test_import_rnnfast_loads_no_lm_module():
    # the language-model toolkit is opt-in: `import rnnfast` (the layers) stays without it,
    # and `import rnnfast.lm` loads it without the demo (argparse, tqdm, the corpus)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(rnnfast.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    code = ("import sys, rnnfast\n"
            "lm = sorted(m for m in sys.modules if m.startswith('rnnfast.lm'))\n"
            "assert not lm and not hasattr(rnnfast, 'lm'), lm\n"
            "import rnnfast.lm\n"
            "assert 'rnnfast.lm.generation' in sys.modules\n"
            "assert 'rnnfast.lm.demo' not in sys.modules\n"
            "assert all(hasattr(rnnfast.lm, name) for name in rnnfast.lm.__all__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
