"""The profiler shows rnnfast's own ops, and none of torch's RNN kernels."""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import rnnfast

TORCH_RNN_KERNELS = ("aten::lstm", "aten::gru", "aten::rnn_tanh", "aten::rnn_relu",
                     "aten::_thnn_fused", "mkldnn_rnn", "aten::lstm_cell", "aten::gru_cell",
                     "aten::rnn_tanh_cell", "aten::rnn_relu_cell")


def _event_names(fn):
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events()}


def _check(names):
    ours = sorted(n for n in names if n.startswith("rnnfast::"))
    assert ours, f"no rnnfast:: op in the profile; events: {sorted(names)[:40]}"
    theirs = sorted(n for n in names if any(k in n for k in TORCH_RNN_KERNELS))
    assert not theirs, f"torch RNN kernels ran: {theirs}"
    return ours


@pytest.mark.parametrize("cls,kw", [
    ("LSTM", {}), ("LSTM", dict(proj_size=2)), ("GRU", {}),
    ("RNN", dict(nonlinearity="tanh")), ("RNN", dict(nonlinearity="relu")),
], ids=["LSTM", "LSTM-proj", "GRU", "RNN_TANH", "RNN_RELU"])
def test_profile_module_forward_backward(cls, kw):
    m = getattr(rnnfast, cls)(3, 4, num_layers=2, bidirectional=True, **kw)
    x = torch.randn(5, 2, 3, requires_grad=True)

    def run():
        out, _ = m(x)
        out.sum().backward()

    ours = _check(_event_names(run))
    # forward and backward both go through rnnfast ops: on CPU a bidirectional layer's two
    # directions run as one op
    assert {"rnnfast::bidirectional_layer", "rnnfast::bidirectional_layer_backward"} <= set(ours), ours


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_profile_packed_and_eval(cls):
    m = getattr(rnnfast, cls)(3, 4, num_layers=2).eval()
    x = torch.randn(5, 3, 3)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 2, 1]))
    _check(_event_names(lambda: m(packed)))


@pytest.mark.parametrize("cls,kw", [("LSTMCell", {}), ("GRUCell", {}),
                                    ("RNNCell", dict(nonlinearity="tanh")),
                                    ("RNNCell", dict(nonlinearity="relu"))],
                         ids=["LSTMCell", "GRUCell", "RNNCell_TANH", "RNNCell_RELU"])
def test_profile_cells(cls, kw):
    m = getattr(rnnfast, cls)(3, 4, **kw)
    x = torch.randn(2, 3, requires_grad=True)

    def run():
        out = m(x)
        (out[0] if isinstance(out, tuple) else out).sum().backward()

    _check(_event_names(run))


def test_ops_registered_under_rnnfast_namespace():
    ns = torch.ops.rnnfast
    # at least one op is reachable as torch.ops.rnnfast.<name>
    names = [n for n in dir(ns) if not n.startswith("_")]
    found = []
    for n in names:
        try:
            obj = getattr(ns, n)
        except (AttributeError, RuntimeError):
            continue
        if isinstance(obj, torch._ops.OpOverloadPacket):
            found.append(n)
    if not found:
        # dir() of an op namespace may be empty until ops are touched: use the profiler names
        m = rnnfast.GRU(3, 4)
        names = _event_names(lambda: m(torch.randn(2, 1, 3)))
        found = [n.split("::", 1)[1].split(".")[0] for n in names if n.startswith("rnnfast::")]
        assert found
        for n in found:
            assert isinstance(getattr(ns, n), torch._ops.OpOverloadPacket), n
    # one forward and one backward op for every cell
    for n in ("layer", "layer_backward"):
        assert isinstance(getattr(ns, n), torch._ops.OpOverloadPacket), n
    for cell in rnnfast.ops.CELLS:
        assert not hasattr(ns, f"{cell}_layer"), f"a per-cell op {cell}_layer is registered"
