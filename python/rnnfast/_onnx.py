"""ONNX export of rnnfast's layers and cells (``torch.onnx.export``, either exporter).

While ``torch.onnx.export`` runs, the modules call :func:`layer` here instead of the fused op
(``torch.ops.rnnfast.layer``, which no ONNX runtime knows); it has the same signature and
results. Each (layer, direction) becomes one node of ONNX's own LSTM / GRU / RNN operator:

- LSTM: torch's gate rows i, f, g, o are reordered to ONNX's i, o, f, c; biases go to ``B``
  as [b_ih, b_hh]. ``peephole=True`` gives the input ``P`` = [w_ci, w_co, w_cf]. The coupled
  LSTM (``coupled_gates=True``; rows i, g, o, f = 1 - i) gives ``input_forget=1`` with zero
  f rows and a zero P_f (ONNX still takes four gate blocks; ONNX Runtime ignores the f rows
  and computes f = 1 - i).
- GRU: rows r, z, n become ONNX's z, r, h, with ``linear_before_reset=1`` (torch's n gate).
- RNN: ``activations=["Tanh"]`` or ``["Relu"]``.

A bidirectional layer is two nodes (``direction`` "forward" and "reverse"), a stack one per
layer; the initial states are the nodes' ``initial_h`` / ``initial_c``. The reordering is
torch ops on the parameters (slices and cat), which the exporters fold into constants. The
dynamo exporter (``dynamo=True``) gets the node from ``torch.onnx.ops.symbolic_multi_out``;
the TorchScript exporter (``dynamo=False``) from the ``symbolic`` of an autograd.Function
whose forward runs the fused op. Batch and time axes can be dynamic.

What ONNX's operators cannot express is exported as the plain-torch loop of
:mod:`rnnfast._reference`, unrolled: one set of nodes (the step's two GEMMs and the cell's
pointwise ops, 16 to 24 nodes per step for an LSTM after the exporter's optimisation) per
time step, for the sequence length of the example input, which the graph then requires (the
batch axis stays dynamic). The graph grows linearly with the sequence length; ONNX Runtime
runs the steps' nodes one by one (bench/onnx_cost.py measures what that costs against an
ONNX LSTM node). It warns when it unrolls. This is used for:

- ``proj_size > 0`` (LSTM with a projection; torch cannot export nn.LSTM's either);
- ``zoneout`` in eval (s_t = p s_{t-1} + (1 - p) s~_t, the expectation);
- ``layer_norm=True`` (the "_ln" cells; the normalisations export as the exporter exports
  F.layer_norm).

A dynamic time axis for such a layer: the dynamo exporter's non-strict pass raises
("proj_size with a dynamic sequence length"); torch may then retry with strict tracing,
which can export with a static time axis (ONNX Runtime then rejects other lengths); under
the TorchScript exporter the graph Reshapes the input to the example's length, so another
length fails at run time rather than being read short.

Raises a RuntimeError naming the option for: ``zoneout`` in training mode (random masks per step): the dynamo exporter exports the model
in its current mode, so call ``model.eval()`` first; the TorchScript exporter's default
``training=TrainingMode.EVAL`` exports eval semantics; PackedSequence input (under the
dynamo exporter, torch.export fails before, on its data-dependent batch_sizes). Inter-layer
``dropout`` and ``weight_drop`` are absent in eval. In training mode (dynamo exporter) they
are torch's F.dropout calls, exported as the exporter exports those (ONNX Dropout nodes, of
which the optimizer may fold the one on W_hh into a constant): not a supported way to get
their training behaviour; export in eval mode.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _cells, _reference, ops

try:  # the flags torch.onnx.is_in_onnx_export() reads, read directly: a cell checks per step
    from torch.onnx._internal.exporter import _flags as _dynamo_flags
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS as _ts_globals
except ImportError:  # pragma: no cover - another torch layout
    _dynamo_flags = _ts_globals = None


def _dynamo_exporting() -> bool:
    if _dynamo_flags is not None:
        return bool(_dynamo_flags._is_onnx_exporting)
    return torch.onnx.is_in_onnx_export() and torch.compiler.is_compiling()


def _torchscript_exporting() -> bool:
    if _ts_globals is not None:
        return bool(_ts_globals.in_onnx_export)
    return torch.onnx.is_in_onnx_export() and not torch.compiler.is_compiling()


def exporting() -> bool:
    """Whether torch.onnx.export (either exporter) is running."""
    if torch.compiler.is_compiling():
        # torch.compile, or torch.export under the dynamo exporter; Dynamo refuses to trace
        # the TorchScript exporter's flag (a property of torch.onnx, on its skip list)
        return _dynamo_exporting()
    return _dynamo_exporting() or _torchscript_exporting()


# The ONNX operator and the permutation of torch's gate blocks into ONNX's order (None: a
# zero block) for each cell the ONNX operators express.
_ONNX_OP = {"lstm": "LSTM", "lstm_coupled": "LSTM", "lstm_peephole": "LSTM",
            "lstm_coupled_peephole": "LSTM", "gru": "GRU", "rnn_tanh": "RNN", "rnn_relu": "RNN"}
_BLOCKS = {
    "LSTM": (0, 3, 1, 2),          # i, f, g, o -> i, o, f, c
    "LSTM_coupled": (0, 2, None, 1),  # i, g, o -> i, o, (f: zeros), c
    "GRU": (1, 0, 2),              # r, z, n -> z, r, h
    "RNN": (0,),
}


def _reorder(t: Tensor, hidden: int, blocks) -> Tensor:
    """The gate blocks (rows of ``hidden``) of ``t`` in ONNX's order."""
    # narrow (Slice), not split: the exporters fold single-output nodes of constants
    parts = [t.narrow(0, b * hidden, hidden) if b is not None else None for b in blocks]
    zeros = next(p for p in parts if p is not None).new_zeros(
        (hidden,) + tuple(t.shape[1:]))
    return torch.cat([p if p is not None else zeros for p in parts], 0)


def _unsupported(what: str, why: str) -> RuntimeError:
    return RuntimeError(f"rnnfast: ONNX export of {what} is not supported: {why}")


def layer(cell: str, input: Tensor, state: Optional[Sequence[Tensor]],
          weights: Sequence[Tensor], lengths: Optional[Tensor] = None, reverse: bool = False,
          zoneout: Sequence[Tensor] = ()) -> Tuple[Tensor, List[Tensor]]:
    """:func:`rnnfast.ops.layer` for torch.onnx.export: one ONNX LSTM/GRU/RNN node, or the
    unrolled reference loop where ONNX's operators have no equivalent (see the module
    docstring)."""
    info = _cells.cell(cell)
    state = list(state) if state is not None else []
    if input.dim() != 3 or lengths is not None:
        raise _unsupported("a PackedSequence input", "pass a padded [T, B, I] tensor")
    zoneout = list(zoneout or ())
    if any(z.dim() != 0 for z in zoneout):
        raise _unsupported("zoneout in training mode", "its masks are random per step; "
                           "call model.eval() before exporting (eval exports the expectation)")
    zoned = any(float(z) != 0 for z in zoneout)
    named = dict(zip(_cells.weight_names(info, len(weights)), weights))
    projected = "weight_hr" in named
    # what ONNX's LSTM/GRU operators lack, by the module option's name
    missing = [what for what, on in (("proj_size", projected), ("zoneout", zoned),
                                     ("layer_norm", info.layer_norm)) if on]
    if not missing and cell not in _ONNX_OP:
        raise _unsupported(f"the {cell!r} cell", "ONNX has no operator for it")
    if missing:
        what = " and ".join(missing)
        if isinstance(input.shape[0], torch.SymInt):
            raise _unsupported(f"{what} with a dynamic sequence length",
                               "the layer exports as one set of nodes per time step (ONNX's "
                               f"LSTM/GRU operators have no {what}); export with a static "
                               "time axis")
        steps = int(input.shape[0])
        warnings.warn(f"rnnfast: ONNX export of {what}: the layer is unrolled into one set of "
                      f"nodes per time step, for exactly the example input's {steps} steps "
                      "(the exported graph needs that sequence length)", stacklevel=3)
        # the probabilities made afresh here: modules caches them per value, and one first
        # made under torch.export is a FakeTensor, which the TorchScript exporter cannot embed
        zoneout = [input.new_full((), float(z)) for z in zoneout]
        if _torchscript_exporting():
            # dynamic_axes cannot make the unrolled steps dynamic: a Reshape to the fixed
            # length makes ONNX Runtime reject another length instead of reading T steps of it
            input = input.reshape(steps, input.shape[1], input.shape[2])
        return _reference.layer(cell, input, state, weights, None, reverse, zoneout)
    return _onnx_node(cell, input, state, named, reverse)


def _onnx_node(cell: str, input: Tensor, state: List[Tensor], named, reverse: bool):
    info = _cells.cell(cell)
    op = _ONNX_OP[cell]
    H = named["weight_ih"].shape[0] // info.gates
    coupled = cell.startswith("lstm_coupled")
    blocks = _BLOCKS["LSTM_coupled" if coupled else op]
    W = _reorder(named["weight_ih"], H, blocks).unsqueeze(0)
    R = _reorder(named["weight_hh"], H, blocks).unsqueeze(0)
    B = None
    if "bias_ih" in named:
        B = torch.cat([_reorder(named["bias_ih"], H, blocks),
                       _reorder(named["bias_hh"], H, blocks)]).unsqueeze(0)
    P = None
    if "weight_ci" in named:
        w_cf = named.get("weight_cf")
        P = torch.cat([named["weight_ci"], named["weight_co"],
                       w_cf if w_cf is not None else torch.zeros_like(named["weight_ci"])]
                      ).unsqueeze(0)
    h0 = state[0].unsqueeze(0) if state else None
    c0 = state[1].unsqueeze(0) if len(state) > 1 else None
    attrs = {"hidden_size": int(H), "direction": "reverse" if reverse else "forward"}
    if op == "LSTM":
        attrs["input_forget"] = int(coupled)
    elif op == "GRU":
        attrs["linear_before_reset"] = 1
    else:
        attrs["activations"] = ["Relu" if cell == "rnn_relu" else "Tanh"]
    inputs = [input, W, R, B, None, h0]
    if op == "LSTM":
        inputs += [c0, P]
    outputs = 3 if op == "LSTM" else 2
    if _dynamo_exporting():
        T, Bn = input.shape[0], input.shape[1]
        shapes = [[T, 1, Bn, H], [1, Bn, H], [1, Bn, H]][:outputs]
        res = torch.onnx.ops.symbolic_multi_out(
            f"::{op}", inputs, attrs, dtypes=[input.dtype] * outputs, shapes=shapes)
    else:
        weights = list(named.values())  # rnnfast's own, in the ops' order
        res = _TorchScriptNode.apply(op, attrs, outputs, cell, reverse, len(state), len(weights),
                                     *inputs, *state, *weights)
    y = res[0].squeeze(1)
    return y, [r.squeeze(0) for r in res[1:]]


def _onnx_attr(name: str, value):
    suffix = {int: "i", str: "s", list: "s"}[type(value)]
    return f"{name}_{suffix}", value


class _TorchScriptNode(torch.autograd.Function):
    """The ONNX node for the TorchScript exporter (its ``symbolic``); the forward runs the
    fused op on rnnfast's own weights (the trailing arguments), so the traced values are
    right."""

    @staticmethod
    def forward(ctx, op, attrs, outputs, cell, reverse, n_state, n_weights, *args):
        onnx_inputs = 8 if op == "LSTM" else 6
        rest = args[onnx_inputs:]
        state, weights = list(rest[:n_state]), list(rest[n_state:n_state + n_weights])
        x = args[0]
        out, final = ops.layer(cell, x, state, weights, None, reverse)
        return (out.unsqueeze(1),) + tuple(s.unsqueeze(0) for s in final)

    @staticmethod
    def symbolic(g, op, attrs, outputs, cell, reverse, n_state, n_weights, *args):
        onnx_inputs = 8 if op == "LSTM" else 6
        inputs = []
        for v in args[:onnx_inputs]:
            if v is None:
                v = g.op("prim::Constant")
                v.setType(torch._C.OptionalType.ofTensor())
            inputs.append(v)
        kwargs = dict(_onnx_attr(k, v) for k, v in attrs.items())
        return g.op(op, *inputs, outputs=outputs, **kwargs)
