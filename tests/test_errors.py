"""Bad inputs and bad constructor arguments: rnnfast raises what torch raises.

Each case is a function of a "library" (torch.nn or rnnfast) that constructs a module and, where
relevant, runs it.  torch runs first to learn the exception type; rnnfast must raise the same type
(or a subclass) with a message that names the problem, and must never crash the process.
"""
import re
import warnings

import pytest
import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast

f64 = torch.float64

RANK = r"\b[0-4]-?D\b|dim|rank"
INPUT_SIZE = r"input[_ ]?size|size\(-1\)|feature"
HX = r"hidden|\bhx\b|\bcx\b|\bh0\b|\bc0\b|state"
DTYPE = r"dtype|type|float|double"
UNBATCHED = r"unbatched|batched|\b[1-3]-?D\b|dim"
SEQLEN = r"sequence|length|seq|time|empty|\bT\b"


def x(*shape, dtype=torch.float32):
    return torch.randn(shape, dtype=dtype)


def hx_for(kind, h, c=None):
    """hx argument for `kind` built from h (and c for LSTM, default: same shape as h)."""
    if kind == "LSTM":
        return (h, h.clone() if c is None else c)
    return h


def _module_cases():
    cases = []
    for kind in ["LSTM", "GRU", "RNN"]:
        def add(name, fn, pattern, kind=kind):
            cases.append(pytest.param(fn, pattern, id=f"{kind}-{name}"))

        def mk(lib, kind=kind, **kw):
            return getattr(lib, kind)(3, 5, **kw)

        add("input-1d", lambda lib, mk=mk: mk(lib)(x(3)), RANK)
        add("input-4d", lambda lib, mk=mk: mk(lib)(x(2, 2, 2, 3)), RANK)
        add("input-size", lambda lib, mk=mk: mk(lib)(x(4, 2, 4)), INPUT_SIZE)
        add("input-size-unbatched", lambda lib, mk=mk: mk(lib)(x(4, 2)), INPUT_SIZE)
        add("hx-batch", lambda lib, mk=mk, k=kind: mk(lib)(x(4, 2, 3), hx_for(k, x(1, 3, 5))), HX)
        add("hx-hidden", lambda lib, mk=mk, k=kind: mk(lib)(x(4, 2, 3), hx_for(k, x(1, 2, 4))), HX)
        add("hx-layers-dirs",
            lambda lib, mk=mk, k=kind: mk(lib, num_layers=2, bidirectional=True)(
                x(4, 2, 3), hx_for(k, x(2, 2, 5))), HX)
        add("hx-dtype", lambda lib, mk=mk, k=kind: mk(lib)(x(4, 2, 3), hx_for(k, x(1, 2, 5, dtype=f64))),
            DTYPE)
        add("input-dtype-vs-params", lambda lib, mk=mk: mk(lib)(x(4, 2, 3, dtype=f64)), DTYPE)
        add("input-dtype-vs-params-hx",
            lambda lib, mk=mk, k=kind: mk(lib)(x(4, 2, 3, dtype=f64), hx_for(k, x(1, 2, 5, dtype=f64))),
            DTYPE)
        add("unbatched-input-batched-hx",
            lambda lib, mk=mk, k=kind: mk(lib)(x(4, 3), hx_for(k, x(1, 2, 5))), UNBATCHED)
        add("batched-input-unbatched-hx",
            lambda lib, mk=mk, k=kind: mk(lib)(x(4, 2, 3), hx_for(k, x(1, 5))), UNBATCHED)
        add("seq-len-zero", lambda lib, mk=mk: mk(lib)(x(0, 2, 3)), SEQLEN)
        add("seq-len-zero-batch-first", lambda lib, mk=mk: mk(lib, batch_first=True)(x(2, 0, 3)),
            SEQLEN)
        add("seq-len-zero-unbatched", lambda lib, mk=mk: mk(lib)(x(0, 3)), SEQLEN)
        add("packed-hx-batch",
            lambda lib, mk=mk, k=kind: mk(lib)(
                pack_padded_sequence(x(4, 2, 3), torch.tensor([4, 2])), hx_for(k, x(1, 3, 5))), HX)
        # constructor arguments
        for v in (None, 1, "yes"):   # torch's op refuses them at the call, rnnfast at once
            add(f"bidirectional-{v}",
                lambda lib, mk=mk, v=v: mk(lib, bidirectional=v)(x(2, 2, 3)), "bidirectional")
        add("dropout-above-1", lambda lib, mk=mk: mk(lib, num_layers=2, dropout=1.5), "dropout")
        add("dropout-negative", lambda lib, mk=mk: mk(lib, num_layers=2, dropout=-0.1), "dropout")
        add("hidden-size-zero", lambda lib, k=kind: getattr(lib, k)(3, 0), "hidden_size")
        add("hidden-size-negative", lambda lib, k=kind: getattr(lib, k)(3, -2), "hidden_size")
        add("hidden-size-float", lambda lib, k=kind: getattr(lib, k)(3, 5.0), "hidden_size")
        add("input-size-zero", lambda lib, k=kind: getattr(lib, k)(0, 5), "input_size")
        add("input-size-float", lambda lib, k=kind: getattr(lib, k)(3.0, 5), "input_size")
        add("num-layers-zero", lambda lib, mk=mk: mk(lib, num_layers=0), "num_layers")
        add("num-layers-float", lambda lib, mk=mk: mk(lib, num_layers=2.0), r"num_layers|int")
        if kind == "LSTM":
            add("cx-batch", lambda lib, mk=mk: mk(lib)(x(4, 2, 3), (x(1, 2, 5), x(1, 3, 5))), HX)
            add("cx-hidden", lambda lib, mk=mk: mk(lib)(x(4, 2, 3), (x(1, 2, 5), x(1, 2, 4))), HX)
            add("hx-not-a-tuple", lambda lib, mk=mk: mk(lib)(x(4, 2, 3), x(2, 2, 5)),
                r"hidden|\bhx\b|\bcx\b|tuple|\b[23]-?D\b")
            add("proj-h0-size",
                lambda lib, mk=mk: mk(lib, proj_size=2)(x(4, 2, 3), (x(1, 2, 5), x(1, 2, 5))), HX)
            add("proj-c0-size",
                lambda lib, mk=mk: mk(lib, proj_size=2)(x(4, 2, 3), (x(1, 2, 2), x(1, 2, 2))), HX)
            add("proj-not-smaller", lambda lib, mk=mk: mk(lib, proj_size=5), "proj_size")
            add("proj-negative", lambda lib, mk=mk: mk(lib, proj_size=-1), "proj_size")
            add("proj-float", lambda lib, mk=mk: mk(lib, proj_size=2.0), r"proj|int|float|size")
        else:
            add("proj-size", lambda lib, mk=mk: mk(lib, proj_size=2), "proj_size")
        if kind == "RNN":
            add("bad-nonlinearity", lambda lib, mk=mk: mk(lib, nonlinearity="sigmoid"),
                "nonlinearity")
    return cases


def _cell_cases():
    cases = []
    for kind in ["LSTMCell", "GRUCell", "RNNCell"]:
        lstm = kind == "LSTMCell"

        def add(name, fn, pattern, kind=kind):
            cases.append(pytest.param(fn, pattern, id=f"{kind}-{name}"))

        def mk(lib, kind=kind, **kw):
            return getattr(lib, kind)(3, 5, **kw)

        def hx(h, lstm=lstm):
            return (h, h.clone()) if lstm else h

        add("input-3d", lambda lib, mk=mk: mk(lib)(x(2, 2, 3)), RANK)
        add("input-0d", lambda lib, mk=mk: mk(lib)(x()), RANK)
        add("input-size", lambda lib, mk=mk: mk(lib)(x(2, 4)), INPUT_SIZE)
        add("hx-batch", lambda lib, mk=mk, hx=hx: mk(lib)(x(2, 3), hx(x(3, 5))), "batch|" + HX)
        add("hx-hidden", lambda lib, mk=mk, hx=hx: mk(lib)(x(2, 3), hx(x(2, 4))), HX)
        add("hx-dtype", lambda lib, mk=mk, hx=hx: mk(lib)(x(2, 3), hx(x(2, 5, dtype=f64))), DTYPE)
        add("input-dtype", lambda lib, mk=mk: mk(lib)(x(2, 3, dtype=f64)), DTYPE)
        add("unbatched-input-batched-hx", lambda lib, mk=mk, hx=hx: mk(lib)(x(3), hx(x(2, 5))),
            HX + "|" + UNBATCHED)
        add("hidden-size-negative", lambda lib, k=kind: getattr(lib, k)(3, -1),
            r"hidden|negative|size")
        add("hidden-size-float", lambda lib, k=kind: getattr(lib, k)(3, 2.0),
            r"hidden|int|float|size")
        if lstm:  # hx of another count of states, or one stacked tensor
            add("hx-one-state", lambda lib, mk=mk: mk(lib)(x(2, 3), (x(2, 5),)), r"two")
            add("hx-three-states", lambda lib, mk=mk: mk(lib)(x(2, 3), (x(2, 5),) * 3), r"two")
            add("hx-stacked", lambda lib, mk=mk: mk(lib)(x(2, 3), x(2, 2, 5)), r"tuple")
        if kind == "RNNCell":
            add("bad-nonlinearity",
                lambda lib, mk=mk: mk(lib, nonlinearity="sigmoid")(x(2, 3)), "nonlinearity")
    return cases


def _check_same_error(fn, pattern):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fn(nn)
        except Exception as exc:  # noqa: BLE001 - we want whatever torch raises
            torch_exc = exc
        else:
            pytest.fail("test case is stale: torch.nn no longer raises here")
        with pytest.raises(type(torch_exc)) as info:
            fn(rnnfast)
    msg = str(info.value)
    # either the message names the problem, or it is exactly torch's own message
    assert re.search(pattern, msg, flags=re.IGNORECASE) or msg == str(torch_exc), (
        f"rnnfast raised {type(info.value).__name__}({msg!r}) which does not name the problem "
        f"(torch said {type(torch_exc).__name__}: {torch_exc})")


@pytest.mark.parametrize("fn,pattern", _module_cases())
def test_module_error_matches_torch(fn, pattern):
    _check_same_error(fn, pattern)


@pytest.mark.parametrize("fn,pattern", _cell_cases())
def test_cell_error_matches_torch(fn, pattern):
    _check_same_error(fn, pattern)


# Cases torch accepts: rnnfast must accept them too and give the same shapes.
ACCEPTED = [
    pytest.param(lambda lib: lib.LSTMCell(3, 0)(x(2, 3)), id="LSTMCell-hidden-zero"),
    pytest.param(lambda lib: lib.GRUCell(3, 0)(x(2, 3)), id="GRUCell-hidden-zero"),
    pytest.param(lambda lib: lib.RNNCell(3, 0)(x(2, 3)), id="RNNCell-hidden-zero"),
    pytest.param(lambda lib: lib.LSTM(3, 5, dropout=1.0, num_layers=2)(x(2, 2, 3)),
                 id="LSTM-dropout-one"),
    pytest.param(lambda lib: lib.GRU(3, 5, dropout=0)(x(2, 2, 3)), id="GRU-dropout-int-zero"),
    pytest.param(lambda lib: lib.RNN(3, 5, 2, "relu", False, True, 0.0, True)(x(2, 2, 3)),
                 id="RNN-positional-args"),
    pytest.param(lambda lib: lib.GRU(3, 5, 2, False, True, 0.0, True)(x(2, 2, 3)),
                 id="GRU-positional-args"),
    pytest.param(lambda lib: lib.LSTM(3, 5, 1, True, False, 0.0, False, 2)(x(2, 2, 3)),
                 id="LSTM-positional-args-proj"),
]


def _shapes(obj):
    if isinstance(obj, torch.Tensor):
        return tuple(obj.shape)
    if isinstance(obj, (tuple, list)):
        return type(obj).__name__, tuple(_shapes(o) for o in obj)
    return type(obj).__name__


@pytest.mark.parametrize("fn", ACCEPTED)
def test_accepted_like_torch(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = fn(nn)
        actual = fn(rnnfast)
    assert _shapes(actual) == _shapes(expected)


@pytest.mark.parametrize("hx", [(None, None), "h-none"], ids=["none-none", "h-none"])
def test_lstm_cell_hx_with_none_is_refused(hx):
    """torch's LSTMCell fails on None inside hx (an AttributeError from deep inside); rnnfast's
    said nothing and ran with zeros for it. Now a TypeError naming hx."""
    if hx == "h-none":
        hx = (x(2, 5), None)
    with pytest.raises(TypeError, match=r"LSTMCell: hx must be a tuple \(h_0, c_0\) of two "
                                        r"tensors, got \("):
        rnnfast.LSTMCell(3, 5)(x(2, 3), hx)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_dropout_single_layer_warns_like_torch(kind):
    with pytest.warns(UserWarning, match="dropout"):
        getattr(nn, kind)(3, 5, dropout=0.3)
    with pytest.warns(UserWarning, match="dropout"):
        getattr(rnnfast, kind)(3, 5, dropout=0.3)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_errors_do_not_poison_module(kind):
    """After a rejected call the module still works."""
    m = getattr(rnnfast, kind)(3, 5)
    with pytest.raises(Exception):
        m(x(4, 2, 7))
    out, _ = m(x(4, 2, 3))
    assert out.shape == (4, 2, 5) and torch.isfinite(out).all()


def test_rnn_mode_set_after_construction_like_torch():
    """torch's RNN reads mode at each call: RNN_TANH -> RNN_RELU changes the nonlinearity (the
    same parameters); rnnfast kept tanh silently. A mode of another cell is refused, naming
    both."""
    ref = nn.RNN(3, 5)
    ours = rnnfast.RNN(3, 5)
    ours.load_state_dict(ref.state_dict())
    inp = x(4, 2, 3)
    for mode in ("RNN_RELU", "RNN_TANH"):
        ref.mode = ours.mode = mode
        torch.testing.assert_close(ours(inp)[0], ref(inp)[0])
    assert ours(inp)[0].min() < 0   # tanh again
    ours.mode = "GRU"
    with pytest.raises(ValueError, match=r"mode 'GRU' does not match the module's cell "
                                         r"'rnn_tanh'"):
        ours(inp)
