"""torch.onnx.export of rnnfast's layers and cells (issue 18), with both exporters.

Each model is exported with ``torch.onnx.export(model, args, f)`` (dynamo=True, the default,
and dynamo=False, the TorchScript exporter), run in ONNX Runtime, and its outputs and final
states compared with rnnfast's own (float32, atol 1e-5). The graph is checked too: ONNX's own
LSTM / GRU / RNN node per layer and direction where those operators express the cell, the
unrolled per-step nodes for proj_size and zoneout (no LSTM node). Then dynamic batch and
sequence length, and what raises. Small shapes, and the cases exported a group at a time
(one model holding several, each case's outputs compared on their own): the dynamo exporter
takes a second or more per export.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import rnnfast
from rnnfast import _onnx

onnx = pytest.importorskip("onnx", reason="ONNX export tests need onnx")
ort = pytest.importorskip("onnxruntime", reason="ONNX export tests need onnxruntime")

ATOL = 1e-5
EXPORTERS = [pytest.param(True, id="dynamo"), pytest.param(False, id="torchscript")]
T, B, I, H = 5, 3, 4, 6


def _flat(obj):
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _flat(o)]
    return [obj]


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Parameters large enough that every one matters (peepholes included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=g) * 1.6 - 0.8)
    return model


def _export(model, args, dynamo: bool, path, dynamic=None, **kwargs):
    """Exports to the file ``path``; ``dynamic``: the dynamic axes of each flat input, a list
    of {axis: name} (dynamic_shapes for dynamo, dynamic_axes for TorchScript)."""
    if dynamo:
        pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript")
    names = [f"in{i}" for i in range(len(_flat(args)))]
    if dynamic is not None:
        if dynamo:
            dims = {}
            spec = [{k: dims.setdefault(v, torch.export.Dim(v)) for k, v in d.items()} or None
                    for d in dynamic]
            it = iter(spec)

            def nest(a):
                return tuple(nest(x) for x in a) if isinstance(a, (tuple, list)) else next(it)
            spec = nest(args)
            # a _Zoo's forward takes *flat: its one argument is the tuple
            kwargs["dynamic_shapes"] = (spec,) if isinstance(model, _Zoo) else spec
        else:
            kwargs["dynamic_axes"] = {n: d for n, d in zip(names, dynamic) if d}
    if not dynamo:
        kwargs["input_names"] = names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), dynamo=dynamo, **kwargs)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, args):
    inputs = session.get_inputs()
    flat = _flat(args)
    assert len(inputs) == len(flat)
    return [torch.from_numpy(o) for o in
            session.run(None, {i.name: a.numpy() for i, a in zip(inputs, flat)})]


def _check(session, model, args):
    with torch.no_grad():
        want = _flat(model(*args))
    got = _run(session, args)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=0)


def _op_types(path):
    graph = onnx.load(str(path)).graph
    assert all(n.domain in ("", "ai.onnx") for n in graph.node), "only ONNX's own operators"
    return [n.op_type for n in graph.node]


def _x(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _states(n, *shape):
    return tuple(_x(*shape, seed=10 + k) for k in range(n))


class _Decoder(torch.nn.Module):
    """A cell run over a few steps in Python, as decoders do."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, xs, state):
        outs = []
        for x in xs:
            state = self.cell(x, state)
            outs.append(state[0] if isinstance(state, tuple) else state)
        return torch.stack(outs), state


# id: (module factory, example args builder, ONNX op, its nodes (layers x directions or
# cell calls); op None: unrolled, one set of nodes per step and no LSTM/GRU/RNN node)
CASES = {
    "lstm": (lambda: rnnfast.LSTM(I, H), lambda: (_x(T, B, I),), "LSTM", 1),
    "lstm_2layer_bidir_batchfirst_states": (
        lambda: rnnfast.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True),
        lambda: (_x(B, T, I), _states(2, 4, B, H)), "LSTM", 4),
    "lstm_nobias_unbatched": (lambda: rnnfast.LSTM(I, H, bias=False),
                              lambda: (_x(T, I),), "LSTM", 1),
    "lstm_weightdrop_dropout_eval": (
        lambda: rnnfast.LSTM(I, H, 2, dropout=0.5, weight_drop=0.5),
        lambda: (_x(T, B, I),), "LSTM", 2),
    "gru_2layer_bidir_state": (lambda: rnnfast.GRU(I, H, 2, bidirectional=True),
                               lambda: (_x(T, B, I), _x(4, B, H, seed=3)), "GRU", 4),
    "gru_batchfirst": (lambda: rnnfast.GRU(I, H, batch_first=True),
                       lambda: (_x(B, T, I),), "GRU", 1),
    "rnn_tanh_2layer_state": (lambda: rnnfast.RNN(I, H, 2),
                              lambda: (_x(T, B, I), _x(2, B, H, seed=3)), "RNN", 2),
    "rnn_relu_bidir_batchfirst": (
        lambda: rnnfast.RNN(I, H, nonlinearity="relu", bidirectional=True, batch_first=True),
        lambda: (_x(B, T, I),), "RNN", 2),
    "lstm_peephole_states": (lambda: rnnfast.LSTM(I, H, peephole=True),
                             lambda: (_x(T, B, I), _states(2, 1, B, H)), "LSTM", 1),
    "lstm_coupled_bidir": (lambda: rnnfast.LSTM(I, H, coupled_gates=True, bidirectional=True),
                           lambda: (_x(T, B, I),), "LSTM", 2),
    "lstm_coupled_peephole_2layer_bidir_states": (
        lambda: rnnfast.LSTM(I, H, 2, coupled_gates=True, peephole=True, bidirectional=True),
        lambda: (_x(T, B, I), _states(2, 4, B, H)), "LSTM", 4),
    "lstm_proj": (lambda: rnnfast.LSTM(I, H, proj_size=2), lambda: (_x(T, B, I),), None, 0),
    "lstm_proj_2layer_bidir_batchfirst_states": (
        lambda: rnnfast.LSTM(I, H, 2, proj_size=3, bidirectional=True, batch_first=True),
        lambda: (_x(B, T, I), (_x(4, B, 3, seed=3), _x(4, B, H, seed=4))), None, 0),
    "lstm_proj_coupled_peephole": (
        lambda: rnnfast.LSTM(I, H, proj_size=2, coupled_gates=True, peephole=True),
        lambda: (_x(T, B, I),), None, 0),
    "lstm_zoneout_pair_states": (lambda: rnnfast.LSTM(I, H, zoneout=(0.2, 0.5)),
                                 lambda: (_x(T, B, I), _states(2, 1, B, H)), None, 0),
    "gru_zoneout_bidir": (lambda: rnnfast.GRU(I, H, bidirectional=True, zoneout=0.3),
                          lambda: (_x(T, B, I),), None, 0),
    "lstmcell_zoneout": (lambda: rnnfast.LSTMCell(I, H, zoneout=0.4),
                         lambda: (_x(B, I), _states(2, B, H)), None, 0),
    "lstmcell_nostate": (lambda: rnnfast.LSTMCell(I, H), lambda: (_x(B, I),), "LSTM", 1),
    "lstmcell_state": (lambda: rnnfast.LSTMCell(I, H),
                       lambda: (_x(B, I), _states(2, B, H)), "LSTM", 1),
    "lstmcell_coupled_peephole": (
        lambda: rnnfast.LSTMCell(I, H, coupled_gates=True, peephole=True),
        lambda: (_x(B, I), _states(2, B, H)), "LSTM", 1),
    "lstmcell_peephole_unbatched": (lambda: rnnfast.LSTMCell(I, H, peephole=True),
                                    lambda: (_x(I), _states(2, H)), "LSTM", 1),
    "grucell_state": (lambda: rnnfast.GRUCell(I, H),
                      lambda: (_x(B, I), _x(B, H, seed=3)), "GRU", 1),
    "rnncell_relu_nostate": (lambda: rnnfast.RNNCell(I, H, nonlinearity="relu"),
                             lambda: (_x(B, I),), "RNN", 1),
    "rnncell_tanh_state": (lambda: rnnfast.RNNCell(I, H),
                           lambda: (_x(B, I), _x(B, H, seed=3)), "RNN", 1),
    "decoder_lstmcell_3steps": (lambda: _Decoder(rnnfast.LSTMCell(I, H, peephole=True)),
                                lambda: (_x(3, B, I), _states(2, B, H)), "LSTM", 3),
    "lstm_ln_2layer_bidir_states": (
        lambda: rnnfast.LSTM(I, H, 2, layer_norm=True, bidirectional=True),
        lambda: (_x(T, B, I), _states(2, 4, B, H)), None, 0),
    "lstm_ln_proj_coupled_peephole": (
        lambda: rnnfast.LSTM(I, H, proj_size=2, coupled_gates=True, peephole=True,
                             layer_norm=True),
        lambda: (_x(T, B, I),), None, 0),
    "gru_ln_batchfirst_state": (lambda: rnnfast.GRU(I, H, layer_norm=True, batch_first=True),
                                lambda: (_x(B, T, I), _x(1, B, H, seed=3)), None, 0),
    "lstmcell_ln": (lambda: rnnfast.LSTMCell(I, H, layer_norm=True),
                    lambda: (_x(B, I), _states(2, B, H)), None, 0),
    "grucell_ln_nostate": (lambda: rnnfast.GRUCell(I, H, layer_norm=True),
                           lambda: (_x(B, I),), None, 0),
}
# The cases exported together, one model per group (the dynamo exporter takes about a second
# per export): each case's outputs are still compared on their own.
GROUPS = {
    "lstm": ["lstm", "lstm_2layer_bidir_batchfirst_states", "lstm_nobias_unbatched",
             "lstm_weightdrop_dropout_eval"],
    "gru_rnn": ["gru_2layer_bidir_state", "gru_batchfirst", "rnn_tanh_2layer_state",
                "rnn_relu_bidir_batchfirst"],
    "lstm_peephole_coupled": ["lstm_peephole_states", "lstm_coupled_bidir",
                              "lstm_coupled_peephole_2layer_bidir_states"],
    "unrolled_proj_size": ["lstm_proj", "lstm_proj_2layer_bidir_batchfirst_states",
                           "lstm_proj_coupled_peephole"],
    "unrolled_zoneout": ["lstm_zoneout_pair_states", "gru_zoneout_bidir", "lstmcell_zoneout"],
    "unrolled_layer_norm": ["lstm_ln_2layer_bidir_states", "lstm_ln_proj_coupled_peephole",
                            "gru_ln_batchfirst_state", "lstmcell_ln", "grucell_ln_nostate"],
    "cells": ["lstmcell_nostate", "lstmcell_state", "lstmcell_coupled_peephole",
              "lstmcell_peephole_unbatched", "grucell_state", "rnncell_relu_nostate",
              "rnncell_tanh_state", "decoder_lstmcell_3steps"],
}
assert sorted(sum(GROUPS.values(), [])) == sorted(CASES)


def _rebuild(struct, flat):
    if isinstance(struct, (tuple, list)):
        return tuple(_rebuild(s, flat) for s in struct)
    return next(flat)


class _Zoo(torch.nn.Module):
    """Several models side by side: the flat inputs of all, the outputs of each."""

    def __init__(self, models, example_args):
        super().__init__()
        self.models = torch.nn.ModuleList(models)
        self.structs = example_args

    def forward(self, *flat):
        flat = iter(flat)
        return tuple(m(*_rebuild(s, flat)) for m, s in zip(self.models, self.structs))


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("group", list(GROUPS))
def test_matches_onnxruntime(group, dynamo, tmp_path):
    """Outputs and final states of each case == rnnfast's; the graph has ONNX's own
    LSTM/GRU/RNN node per layer and direction (or per cell call), or, for an unrolled layer
    (proj_size, zoneout), per-step nodes and none of those."""
    cases = [CASES[c] for c in GROUPS[group]]
    models = [_randomize(make(), seed=k).eval() for k, (make, *_) in enumerate(cases)]
    args = [build() for _, build, _, _ in cases]
    # eval: the TorchScript exporter restores the model's mode after export, and a train()
    # of the _Zoo would reach the cases
    session = _export(_Zoo(models, args).eval(), tuple(_flat(args)), dynamo,
                      tmp_path / "m.onnx")
    got = iter(_run(session, _flat(args)))
    for name, model, a in zip(GROUPS[group], models, args):
        with torch.no_grad():
            want = _flat(model(*a))
        for k, w in enumerate(want):
            torch.testing.assert_close(next(got), w, atol=ATOL, rtol=0,
                                       msg=lambda m: f"{name}, output {k}: {m}")
    assert next(got, None) is None
    ops = _op_types(tmp_path / "m.onnx")
    for op in ("LSTM", "GRU", "RNN"):
        assert ops.count(op) == sum(n for _, _, o, n in cases if o == op), op
    if all(op is None for _, _, op, _ in cases):  # unrolled: per-step nodes
        assert ops.count("Tanh") >= T * len(cases)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_dynamic_batch_and_time(dynamo, tmp_path):
    """Batch and sequence length dynamic (dynamic_shapes / dynamic_axes): one export, run at
    other sizes, batch 1 and length 1 included."""
    lstm = _randomize(rnnfast.LSTM(I, H, 2, bidirectional=True, batch_first=True,
                                   peephole=True, coupled_gates=True)).eval()
    gru = _randomize(rnnfast.GRU(I, H, 2, bidirectional=True), seed=1).eval()
    cell = _randomize(rnnfast.LSTMCell(I, H), seed=2).eval()

    def args(b, t):
        return ((_x(b, t, I, seed=b + t), _states(2, 4, b, H)),
                (_x(t, b, I, seed=b * t), _x(4, b, H, seed=b)),
                (_x(b, I, seed=b), _states(2, b, H)))

    example = args(B, T)
    dynamic = ([{0: "batch", 1: "time"}] + [{1: "batch"}] * 2 + [{0: "time", 1: "batch"}]
               + [{1: "batch"}] + [{0: "batch"}] * 3)
    session = _export(_Zoo([lstm, gru, cell], example).eval(), tuple(_flat(example)), dynamo,
                      tmp_path / "m.onnx", dynamic=dynamic)
    for b, t in [(B, T), (2, 9), (1, 1)]:
        new = args(b, t)
        got = iter(_run(session, _flat(new)))
        for model, a in zip([lstm, gru, cell], new):
            with torch.no_grad():
                for w in _flat(model(*a)):
                    torch.testing.assert_close(next(got), w, atol=ATOL, rtol=0)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_proj_size_dynamic_batch(dynamo, tmp_path):
    """The unrolled proj_size graph keeps the batch axis dynamic (the time axis is fixed)."""
    model = _randomize(rnnfast.LSTM(I, H, proj_size=2)).eval()
    session = _export(model, (_x(T, B, I),), dynamo, tmp_path / "m.onnx",
                      dynamic=[{1: "batch"}])
    for b in (B, 1, 7):
        _check(session, model, (_x(T, b, I, seed=b),))


def test_unrolled_layer_warns():
    """The export path of an unrolled layer says so, and computes the fused op's results."""
    model = _randomize(rnnfast.LSTM(I, H, proj_size=2))
    weights = [getattr(model, n) for n in model._all_weights[0]]
    x = _x(T, B, I)
    with pytest.warns(UserWarning, match="proj_size: the layer is unrolled .* 5 steps"):
        out, (h, c) = _onnx.layer(model._cell_name, x, [], weights)
    with torch.no_grad():
        want, (h_n, c_n) = model(x)
    torch.testing.assert_close(out, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(c, c_n[0], atol=ATOL, rtol=0)


def test_unrolled_layer_dynamic_time_raises_dynamo(tmp_path):
    model = rnnfast.LSTM(I, H, proj_size=2).eval()
    with pytest.raises(Exception, match="proj_size with a dynamic sequence length"):
        _export(model, (_x(T, B, I),), True, tmp_path / "m.onnx",
                dynamic=[{0: "time", 1: "batch"}])


def test_unrolled_layer_rejects_other_lengths_torchscript(tmp_path):
    """dynamic_axes on the time axis of an unrolled (proj_size) layer: never silently wrong
    on another length, a Reshape to the example's length fails at run time."""
    model = _randomize(rnnfast.LSTM(I, H, proj_size=2)).eval()
    session = _export(model, (_x(T, B, I),), False, tmp_path / "m.onnx",
                      dynamic=[{0: "time", 1: "batch"}])
    _check(session, model, (_x(T, 2, I),))
    with pytest.raises(Exception, match="Reshape"):
        _run(session, (_x(T + 2, B, I),))


def test_zoneout_in_training_raises_dynamo(tmp_path):
    model = rnnfast.LSTM(I, H, zoneout=0.3).train()
    with pytest.raises(Exception, match="zoneout in training mode"):
        _export(model, (_x(T, B, I),), True, tmp_path / "m.onnx")


def test_zoneout_in_training_torchscript(tmp_path):
    """The TorchScript exporter's default training=EVAL exports eval semantics (and leaves
    the model in training mode); PRESERVE keeps training mode, which raises."""
    model = _randomize(rnnfast.LSTM(I, H, zoneout=0.3)).train()
    args = (_x(T, B, I),)
    session = _export(model, args, False, tmp_path / "m.onnx")
    assert model.training
    _check(session, model.eval(), args)
    model.train()
    with pytest.raises(RuntimeError, match="zoneout in training mode"):
        _export(model, args, False, tmp_path / "m2.onnx",
                training=torch.onnx.TrainingMode.PRESERVE)


def test_packed_sequence_raises_torchscript(tmp_path):
    class Packed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = rnnfast.LSTM(I, H)

        def forward(self, x, lengths):
            out, (h, _) = self.lstm(torch.nn.utils.rnn.pack_padded_sequence(x, lengths))
            return out.data, h

    with pytest.raises(RuntimeError, match="PackedSequence input is not supported"):
        _export(Packed().eval(), (_x(T, B, I), torch.tensor([5, 4, 2])), False,
                tmp_path / "m.onnx")


def test_layer_norm_dynamic_time_raises_dynamo(tmp_path):
    """A layer-normalised layer unrolls like a projected one: a dynamic time axis is refused
    by name."""
    with pytest.raises(Exception, match="layer_norm with a dynamic sequence length"):
        _export(rnnfast.GRU(I, H, layer_norm=True).eval(), (_x(T, B, I),), True,
                tmp_path / "m.onnx", dynamic=[{0: "time", 1: "batch"}])


def test_export_leaves_eager_path(tmp_path):
    """After an export (and outside one) the modules run the fused op again."""
    from rnnfast import modules, ops
    model = rnnfast.GRU(I, H).eval()
    _export(model, (_x(T, B, I),), False, tmp_path / "m.onnx")
    assert not _onnx.exporting()
    assert modules._layer_fn(torch.device("cpu")) is ops.layer


def test_torch_compile_fullgraph_still_traces():
    """The modules' is-exporting check must not break torch.compile(fullgraph=True) (Dynamo
    refuses to trace the TorchScript exporter's flag)."""
    cell = rnnfast.LSTMCell(I, H)
    lstm = rnnfast.GRU(I, H)

    def f(x, h, c):
        h, c = cell(x[0], (h, c))
        return h, c, lstm(x)[0]

    args = (_x(T, B, I), *_states(2, B, H))
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    with torch.no_grad():
        for g, w in zip(compiled(*args), f(*args)):
            torch.testing.assert_close(g, w, atol=0, rtol=0)
