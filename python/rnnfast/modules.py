"""Drop-in replacements for torch.nn.LSTM / GRU / RNN and their cells.

Same constructor arguments, parameter names, shapes, registration order and
initialisation as torch, so ``state_dict`` moves both ways. Stacking, directions,
inter-layer dropout, batch_first, unbatched input and PackedSequence are handled
here; each (layer, direction) runs as one fused op from :mod:`rnnfast.ops`, or on CPU
both directions of a bidirectional layer as one (``ops.bidirectional_layer``), and two
stacked layers of one direction with no dropout between them as one
(``ops.stacked_layers``; the layer ops whenever a gradient is needed).

These classes derive from ``nn.Module``, not from ``nn.RNNBase``: Dynamo refuses
to trace ``nn.RNNBase`` subclasses, and ``torch.compile(fullgraph=True)`` must
work on models that use them.

One file of about 700 lines, layers and cells together, for two reasons. The module path is
part of every saved model: ``torch.save(model)`` pickles ``rnnfast.modules.LSTMCell`` (and
the others) by name, and ``torch.load(..., weights_only=True)`` admits the classes
registered in ``rnnfast/__init__.py`` only under their current module path, so a class moved
to another module would no longer load from earlier saves. And the cells share the zoneout,
device and LSTM-variant helpers at the top of this file with the layers.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import init
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import _C, _cells, _onnx, _reference, ops

_warned_devices = set()


def _weights_of(module: nn.Module, names: Sequence[str]) -> List[Tensor]:
    """The tensors ``names`` of ``module``, from its ``_parameters`` where they are registered
    (a dict lookup: nn.Module's ``__getattr__`` costs about 0.7 us a name, which a cell
    stepped in a Python loop pays every step), else as attributes (a weight replaced by a
    plain tensor, as weight-drop wrappers do)."""
    params = module._parameters
    return [params[n] if n in params else getattr(module, n) for n in names]


_CELL_WEIGHT_NAMES: Dict[Tuple[str, bool], Tuple[str, ...]] = {}


def _check_weight_dtype(name: str, input: Tensor, w_dtype: torch.dtype) -> None:
    """A cell's input in the dtype of its weights (any, under autocast), as torch's cells."""
    if input.dtype != w_dtype and not torch.is_autocast_enabled(input.device.type):
        raise RuntimeError(
            f"{name}: input dtype ({input.dtype}) does not match weight dtype ({w_dtype})")


def _cell_weight_names(cell_name: str, bias: bool) -> Tuple[str, ...]:
    """The names of a cell module's weights in the ops' order, memoised per (cell, bias)."""
    key = (cell_name, bool(bias))
    names = _CELL_WEIGHT_NAMES.get(key)
    if names is None:
        names = _CELL_WEIGHT_NAMES[key] = tuple(
            p.name for p in _cells.params_of(_cells.DESCRIPTIONS[cell_name], bias, False))
    return names


def _layer_fn(device: torch.device):
    """The fused op where this build has native kernels for the device; elsewhere the
    plain-PyTorch loop, with a one-time warning. Under torch.onnx.export, the ONNX export of
    a layer."""
    if _onnx.exporting():
        return _onnx.layer
    if ops.has_native_kernels(device.type):
        return ops.layer
    if device.type not in _warned_devices:
        _warned_devices.add(device.type)
        why = ("its CUDA kernels are off (RNNFAST_CUDA_KERNELS=1 turns them on)"
               if device.type == "cuda" and _C.cuda_built else "it has no native kernels for it")
        warnings.warn(
            f"rnnfast: device '{device.type}' runs the plain-PyTorch reference implementation "
            f"(correct but slower): {why}",
            stacklevel=3,
        )
    return _reference.layer


def _check_batch_sizes(data: Tensor, batch_sizes: Tensor) -> None:
    """torch's pad_packed_sequence trusts batch_sizes (and writes out of bounds on bad ones)."""
    if (batch_sizes.dim() != 1 or batch_sizes.numel() == 0 or batch_sizes.dtype != torch.int64
            or batch_sizes.device.type != "cpu"):
        raise RuntimeError(
            "PackedSequence.batch_sizes must be a non-empty 1-D int64 CPU tensor, got "
            f"{batch_sizes.dtype} of shape {tuple(batch_sizes.shape)} on {batch_sizes.device}")
    if (bool((batch_sizes <= 0).any()) or bool((batch_sizes[1:] > batch_sizes[:-1]).any())
            or int(batch_sizes.sum()) != data.size(0)):
        raise RuntimeError(
            "PackedSequence.batch_sizes must be positive, non-increasing and sum to "
            f"data.size(0)={data.size(0)}, got {batch_sizes.tolist()}")


def _check_type(name: str, value, types, type_name: str) -> None:
    if not isinstance(value, types) or (types is not bool and isinstance(value, bool)):
        raise TypeError(f"{name} should be of type {type_name}, got: {type(value).__name__}")


def _zoneout_probs(owner: str, zoneout, cell_state: bool) -> Tuple[float, ...]:
    """The zoneout probabilities per state ([h] or [h, c]) of a `zoneout` argument: a number p
    for every state, or for a cell with a cell state a pair (p_c, p_h)."""
    def prob(v):
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not 0 <= v <= 1:
            raise ValueError(f"{owner}: zoneout should be a probability in [0, 1]"
                             f"{' or a pair (p_c, p_h) of them' if cell_state else ''}, "
                             f"got {zoneout!r}")
        return float(v)

    if cell_state and isinstance(zoneout, (tuple, list)):
        if len(zoneout) != 2:
            raise ValueError(f"{owner}: zoneout should be a probability or a pair (p_c, p_h), "
                             f"got {zoneout!r}")
        p_c, p_h = (prob(v) for v in zoneout)
        return (p_h, p_c)
    p = prob(zoneout)
    return (p, p) if cell_state else (p,)


def _zoneout_tensors(probs: Sequence[float], training: bool, rows: tuple,
                     sizes: Sequence[int], like: Tensor) -> List[Tensor]:
    """The ops' `zoneout` list for one layer call: [] without zoneout; in training a mask per
    state (ops.keep_mask: Bernoulli(p) seeded from torch's RNG, 1 keeps the previous value;
    drawn for h, then c), in eval the probabilities as 0-D tensors (the expectation)."""
    if not any(probs):
        return []
    if not training:
        return [_probability(p) for p in probs]
    return [ops.keep_mask(rows + (n,), p, like.dtype, like.device)
            if p > 0 else _probability(0.0) for p, n in zip(probs, sizes)]


_PROBABILITIES: Dict[float, Tensor] = {}


def _probability(p: float) -> Tensor:
    """p as a 0-D float64 CPU tensor, made once per value (the ops only read it). It is made
    on the CPU whatever the default device, and outside inference mode: autograd saves it
    when a later call records a graph, which an inference tensor would refuse."""
    t = _PROBABILITIES.get(p)
    if t is None:
        with torch.inference_mode(False):
            t = torch.tensor(p, dtype=torch.float64, device="cpu")
        # Kept only when made in plain eager mode: not while torch.compile or torch.export
        # traces (the graph makes its own constant; one made there may be fake, or an
        # inference tensor when the compiled call runs under inference_mode) nor under a torch
        # function or dispatch mode (a FakeTensorMode makes fake tensors), which later eager
        # calls must not find.
        if not (torch.compiler.is_compiling() or torch._C._is_torch_function_mode_enabled()
                or torch._C._len_torch_dispatch_stack()):
            _PROBABILITIES[p] = t
    return t


def _init_parameters(m: nn.Module) -> None:
    """torch's RNN initialisation, U(-1/sqrt(H), 1/sqrt(H)), for every parameter but the
    layer-norm ones: gains (ln_*_weight) 1, shifts (ln_*_bias) 0."""
    stdv = 1.0 / math.sqrt(m.hidden_size) if m.hidden_size > 0 else 0
    for name, weight in m.named_parameters():
        parts = name.split(".")
        if parts[0] == "parametrizations" and parts[-1].startswith("original"):
            name = parts[1]  # the original of a parametrized parameter (not the
            #                  parametrization's own parameters)
        if name.startswith("ln_"):
            init.constant_(weight, 1.0 if "_weight" in name else 0.0)
        else:
            init.uniform_(weight, -stdv, stdv)


class _ZoneoutOption:
    """The ``zoneout`` attribute of the modules and cells: assigning it (a schedule, or turning
    zoneout off after construction) validates it and sets the probabilities per state the
    forward reads (``_zoneout_p``). Modules pickled before this kept ``zoneout`` in their
    ``__dict__``; it is read from there. The class gives ``_cell``, its cell's description."""

    @property
    def zoneout(self):
        d = self.__dict__
        return d["_zoneout"] if "_zoneout" in d else d.get("zoneout", 0.0)

    @zoneout.setter
    def zoneout(self, value) -> None:
        value = tuple(value) if isinstance(value, (tuple, list)) else value
        probs = _zoneout_probs(type(self).__name__, value, self._cell.cell_state)
        # kept as plain floats (a numpy number would stop torch.load(weights_only=True))
        self.__dict__["_zoneout"] = (tuple(float(v) for v in value) if isinstance(value, tuple)
                                     else float(value))
        self.__dict__["_zoneout_p"] = probs


def _options_repr(m: nn.Module) -> str:
    """The extra_repr part of rnnfast's own options that are on (modules pickled before an
    option existed lack its attribute, which reads as off)."""
    d = m.__dict__
    s = ""
    if d.get("coupled_gates"):
        s += ", coupled_gates=True"
    if d.get("peephole"):
        s += ", peephole=True"
    if d.get("layer_norm"):
        s += ", layer_norm=True"
    if d.get("weight_drop"):
        s += f", weight_drop={d['weight_drop']}"
    if any(d.get("_zoneout_p", ())):
        s += f", zoneout={m.zoneout}"
    return s


def check_weight_drop(value) -> float:
    """``weight_drop`` (DropConnect on W_hh) as a float, checked to be a number in [0, 1)."""
    if (not isinstance(value, numbers.Number) or isinstance(value, bool)
            or not 0 <= value < 1):
        raise ValueError(
            "weight_drop should be a number in range [0, 1) representing the probability of "
            f"an element of weight_hh being zeroed in training, got {value!r}")
    return float(value)


def _refuse_script(self):
    """torch.jit.script calls this on every module it compiles (nn.Module's hook
    ``__prepare_scriptable__``): rnnfast's forward is Python around its ops that TorchScript's
    compiler cannot read, so it says that and what works instead, rather than fail on some
    line of it."""
    raise RuntimeError(
        f"rnnfast.{type(self).__name__} cannot be compiled by torch.jit.script (its forward is "
        "Python that TorchScript cannot compile); use torch.jit.trace, torch.compile, "
        "torch.export or torch.onnx.export, which support it")


class RNNBase(_ZoneoutOption, nn.Module):
    """Shared machinery of :class:`LSTM`, :class:`GRU` and :class:`RNN`."""

    __prepare_scriptable__ = _refuse_script

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None,
                 dtype=None, *, cell: Optional[str] = None, weight_drop: float = 0.0,
                 zoneout=0.0) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        # torch's mode names the cell ("LSTM", "GRU", "RNN_TANH", "RNN_RELU") unless a variant
        # of it is named by `cell` (e.g. "lstm_coupled" for mode "LSTM")
        if not isinstance(mode, str) or mode.lower() not in _cells.DESCRIPTIONS:
            raise ValueError(f"Unrecognized RNN mode: {mode}")
        cell = _cells.cell(cell if cell is not None else mode.lower())
        if not cell.name.startswith(mode.lower()):
            raise ValueError(f"cell {cell.name!r} is not a variant of mode {mode!r}")
        self._cell_name = cell.name
        if (not isinstance(dropout, numbers.Number) or isinstance(dropout, bool)
                or not 0 <= dropout <= 1):
            raise ValueError(
                "dropout should be a number in range [0, 1] representing the probability of "
                f"an element being zeroed, got {dropout!r}")
        weight_drop = check_weight_drop(weight_drop)
        _check_type("bias", bias, bool, "bool")
        _check_type("batch_first", batch_first, bool, "bool")
        _check_type("bidirectional", bidirectional, bool, "bool")  # (torch's op refuses others)
        _check_type("input_size", input_size, int, "int")
        _check_type("hidden_size", hidden_size, int, "int")
        _check_type("num_layers", num_layers, int, "int")
        _check_type("proj_size", proj_size, int, "int")
        if input_size <= 0:
            raise ValueError(f"input_size must be greater than zero, got {input_size}")
        if hidden_size <= 0:
            raise ValueError(f"hidden_size must be greater than zero, got {hidden_size}")
        if num_layers <= 0:
            raise ValueError(f"num_layers must be greater than zero, got {num_layers}")
        if proj_size < 0:
            raise ValueError(
                "proj_size should be a positive integer or zero to disable projections, "
                f"got {proj_size}")
        if proj_size >= hidden_size:
            raise ValueError(
                f"proj_size has to be smaller than hidden_size, got proj_size={proj_size} "
                f"and hidden_size={hidden_size}")
        if proj_size > 0 and not cell.projection:
            takes = [n.upper() for n, c in _cells.DESCRIPTIONS.items() if c.projection]
            raise ValueError(f"proj_size argument is only supported for {', '.join(takes)}, "
                             f"not {mode}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero "
                f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
                f"num_layers={num_layers}", stacklevel=2)

        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.weight_drop = float(weight_drop)
        self.zoneout = zoneout  # (validated; see _ZoneoutOption)
        num_directions = 2 if bidirectional else 1
        real_hidden_size = proj_size if proj_size > 0 else hidden_size

        # the layer's parameters as the C++ core lists them (names, order, shapes, presence)
        params = _cells.params_of(cell, bias, proj_size > 0)
        self._flat_weights_names: List[str] = []
        self._all_weights: List[List[str]] = []
        for layer in range(num_layers):
            layer_input_size = input_size if layer == 0 else real_hidden_size * num_directions
            sizes = _cells.extent_sizes(cell, layer_input_size, hidden_size, proj_size)
            for direction in range(num_directions):
                suffix = "_reverse" if direction == 1 else ""
                names = []
                for p in params:
                    name = f"{p.name}_l{layer}{suffix}"
                    setattr(self, name, nn.Parameter(
                        torch.empty(_cells.param_shape(p, sizes), **factory_kwargs)))
                    names.append(name)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self._init_flat_weights()
        self.reset_parameters()

    @property
    def _cell(self) -> _cells.Cell:
        """The description of this module's cell."""
        # modules pickled before the cell was stored have torch's mode's cell
        d = self.__dict__
        mode = d.get("mode")
        name = d.get("_cell_name") or mode.lower()
        if mode is not None and not name.startswith(mode.lower()):
            # torch's RNN reads its mode at each call: tanh and ReLU share their parameters
            if {name, mode.lower()} == {"rnn_tanh", "rnn_relu"}:
                name = mode.lower()
            else:
                raise ValueError(
                    f"{type(self).__name__}: mode {mode!r} does not match the module's cell "
                    f"{name!r}; after construction mode can only change between 'RNN_TANH' "
                    f"and 'RNN_RELU' (the other cells have other parameters)")
        return _cells.DESCRIPTIONS[name]

    # --- the nn.RNNBase surface -------------------------------------------------------------

    def _init_flat_weights(self) -> None:
        self._flat_weights = [getattr(self, name) if hasattr(self, name) else None
                              for name in self._flat_weights_names]

    def __setattr__(self, attr, value) -> None:
        if hasattr(self, "_flat_weights_names") and attr in self._flat_weights_names:
            # keep _flat_weights in sync when a weight is reassigned (weight drop etc.)
            self._flat_weights[self._flat_weights_names.index(attr)] = value
        super().__setattr__(attr, value)

    def flatten_parameters(self) -> None:
        """No-op: rnnfast reads the parameters in place (kept for nn.LSTM compatibility)."""

    def _apply(self, fn, recurse=True):
        ret = super()._apply(fn, recurse)
        self._init_flat_weights()
        return ret

    def reset_parameters(self) -> None:
        _init_parameters(self)

    @property
    def all_weights(self) -> List[List[nn.Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def __setstate__(self, state):
        super().__setstate__(state)
        self._init_flat_weights()

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        return s.format(**self.__dict__) + _options_repr(self)

    def check_input(self, input: Tensor, batch_sizes: Optional[Tensor]) -> None:
        weight_dtype = self.weight_ih_l0.dtype
        if input.dtype != weight_dtype and not torch.is_autocast_enabled(input.device.type):
            raise ValueError(
                f"RNN input dtype ({input.dtype}) does not match weight dtype ({weight_dtype}). "
                f"Convert input: input.to({weight_dtype}), or convert model: "
                f"model.to({input.dtype})")
        expected_input_dim = 2 if batch_sizes is not None else 3
        if input.dim() != expected_input_dim:
            raise RuntimeError(
                f"input must have {expected_input_dim} dimensions, got {input.dim()}")
        if self.input_size != input.size(-1):
            raise RuntimeError(
                "input.size(-1) must be equal to input_size. "
                f"Expected {self.input_size}, got {input.size(-1)}")

    def get_expected_hidden_size(self, input: Tensor,
                                 batch_sizes: Optional[Tensor]) -> Tuple[int, int, int]:
        if batch_sizes is not None:
            mini_batch = int(batch_sizes[0])
        else:
            mini_batch = input.size(0) if self.batch_first else input.size(1)
        num_directions = 2 if self.bidirectional else 1
        size = self.proj_size if self.proj_size > 0 else self.hidden_size
        return (self.num_layers * num_directions, mini_batch, size)

    def get_expected_cell_size(self, input: Tensor,
                               batch_sizes: Optional[Tensor]) -> Tuple[int, int, int]:
        if batch_sizes is not None:
            mini_batch = int(batch_sizes[0])
        else:
            mini_batch = input.size(0) if self.batch_first else input.size(1)
        num_directions = 2 if self.bidirectional else 1
        return (self.num_layers * num_directions, mini_batch, self.hidden_size)

    def check_hidden_size(self, hx: Tensor, expected_hidden_size: Tuple[int, int, int],
                          msg: str = "Expected hidden size {}, got {}") -> None:
        if hx.size() != expected_hidden_size:
            raise RuntimeError(msg.format(expected_hidden_size, list(hx.size())))

    def _check_state_tensor(self, name: str, t: Tensor, input: Tensor) -> None:
        if t.dtype != input.dtype and not torch.is_autocast_enabled(input.device.type):
            raise RuntimeError(
                f"{type(self).__name__}: {name} dtype ({t.dtype}) does not match input dtype "
                f"({input.dtype})")
        if t.device != input.device:
            raise RuntimeError(
                f"{type(self).__name__}: {name} is on {t.device} but input is on "
                f"{input.device}; move them to the same device")

    def check_forward_args(self, input: Tensor, hidden, batch_sizes: Optional[Tensor]) -> None:
        self.check_input(input, batch_sizes)
        if self._cell.cell_state:
            self.check_hidden_size(hidden[0], self.get_expected_hidden_size(input, batch_sizes),
                                   "Expected hidden[0] size {}, got {}")
            self.check_hidden_size(hidden[1], self.get_expected_cell_size(input, batch_sizes),
                                   "Expected hidden[1] size {}, got {}")
            self._check_state_tensor("hx", hidden[0], input)
            self._check_state_tensor("cx", hidden[1], input)
        else:
            self.check_hidden_size(hidden, self.get_expected_hidden_size(input, batch_sizes))
            self._check_state_tensor("hx", hidden, input)

    def permute_hidden(self, hx, permutation: Optional[Tensor]):
        if permutation is None:
            return hx
        # the states' batch dimension is 1
        if self._cell.cell_state:
            return hx[0].index_select(1, permutation), hx[1].index_select(1, permutation)
        return hx.index_select(1, permutation)

    # --- forward ---------------------------------------------------------------------------

    def _zero_state(self, input: Tensor, batch: int):
        num_directions = 2 if self.bidirectional else 1
        size = self.proj_size if self.proj_size > 0 else self.hidden_size
        h = torch.zeros(self.num_layers * num_directions, batch, size, dtype=input.dtype,
                        device=input.device)
        if not self._cell.cell_state:
            return h
        c = torch.zeros(self.num_layers * num_directions, batch, self.hidden_size,
                        dtype=input.dtype, device=input.device)
        return h, c

    def _layers(self, x: Tensor, hx, lengths: Optional[Tensor]):
        """Runs every layer and direction over time-major x: [T, B, I], or packed rows [N, I]
        (PackedSequence.data) with their non-increasing lengths (CPU). hx None: zero initial
        states (the ops start from zeros without a state tensor)."""
        cell = self._cell
        # the initial states, stacked: (h0,) or (h0, c0), each [layers * directions, B, *]
        stacked = None if hx is None else tuple(hx) if cell.cell_state else (hx,)
        run = _layer_fn(x.device)
        num_directions = 2 if self.bidirectional else 1
        # DropConnect (weight_drop): in training, W_hh through inverted dropout, one mask per
        # call for all its steps (a call runs the whole sequence)
        drop = self.__dict__.get("weight_drop", 0.0) if self.training else 0.0
        if drop > 0:
            w_hh = [p.name for p in _cells.params_of(cell, self.bias, self.proj_size > 0)
                    ].index("weight_hh")
        # on CPU both directions of a layer run in one op (on two threads and while W_hh fits
        # twice the L2, one core each: csrc/core/rnn.h, layer_forward_pair)
        pair = num_directions == 2 and run is ops.layer and x.device.type == "cpu"
        # on CPU two stacked layers of one direction with no dropout between them run in one
        # call (inference: on two threads, a wavefront, one core per layer; see
        # ops.stacked_layers), the same bits as one after the other
        stack = (num_directions == 1 and run is ops.layer and x.device.type == "cpu"
                 and x.dtype in (torch.float32, torch.float64)
                 and (self.dropout == 0 or not self.training))

        def draw(layer):  # per direction: (state, weights, zoneout), drawn in direction order
            calls = []
            for direction in range(num_directions):
                idx = layer * num_directions + direction
                # _all_weights lists the layer's parameters in the ops' weights order
                weights = [getattr(self, name) for name in self._all_weights[idx]]
                if drop > 0:
                    weights[w_hh] = F.dropout(weights[w_hh], drop, True)
                zoneout = _zoneout_tensors(
                    self.__dict__.get("_zoneout_p", ()), self.training, tuple(x.shape[:-1]),
                    [self.proj_size or self.hidden_size, self.hidden_size], x)
                state = [s[idx] for s in stacked] if stacked is not None else []
                calls.append((state, weights, zoneout))
            return calls

        finals = []
        layer = 0
        while layer < self.num_layers:
            calls = draw(layer)
            if stack and layer + 1 < self.num_layers:
                (state, weights, zoneout), = calls
                (state_u, weights_u, zoneout_u), = draw(layer + 1)
                (_, final), (x, final_u) = ops.stacked_layers(
                    cell.name, x, state, state_u, weights, weights_u, lengths, zoneout,
                    zoneout_u)
                finals.extend((final, final_u))
                layer += 2
                continue
            if pair:
                (f_state, f_weights, f_zoneout), (r_state, r_weights, r_zoneout) = calls
                results = ops.bidirectional_layer(cell.name, x, f_state, r_state, f_weights,
                                                  r_weights, lengths, f_zoneout, r_zoneout)
            else:
                results = [run(cell.name, x, state, weights, lengths, direction == 1, zoneout)
                           for direction, (state, weights, zoneout) in enumerate(calls)]
            outs = [out for out, _ in results]
            finals.extend(final for _, final in results)
            x = outs[0] if num_directions == 1 else torch.cat(outs, dim=-1)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
            layer += 1
        # stacked copies even for one (layer, direction): a view would refuse an in-place
        # h_n.detach_(), which truncated-BPTT code calls on nn.LSTM's states
        states = [torch.stack(per_state, 0) for per_state in zip(*finals)]
        return x, (tuple(states) if cell.cell_state else states[0])

    def forward(self, input, hx=None):
        name = "RNN" if self.mode.startswith("RNN") else self.mode
        paired = self._cell.cell_state   # the state is a tuple (h, c)
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            _check_batch_sizes(data, batch_sizes)
            if hx is None:
                hx = self._zero_state(data, int(batch_sizes[0]))
            else:
                hx = self.permute_hidden(hx, sorted_indices)
            self.check_forward_args(data, hx, batch_sizes)
            if data.device.type == "cpu":
                # The CPU ops take the packed rows as they are (no padding): the sequence
                # lengths, in the packed (non-increasing) order, say which rows each step has.
                steps = torch.arange(int(batch_sizes[0]), device=batch_sizes.device)
                lengths = (batch_sizes.unsqueeze(1) > steps).sum(0)
                out, hidden = self._layers(data, hx, lengths)
            else:
                padded, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))
                out, hidden = self._layers(padded, hx, lengths)
                out = pack_padded_sequence(out, lengths, enforce_sorted=True).data
            output = PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices)
            return output, self.permute_hidden(hidden, unsorted_indices)

        if not isinstance(input, Tensor):
            raise TypeError(
                f"{name}: input must be a Tensor or a PackedSequence, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        if hx is not None:
            states = hx if paired else (hx,)
            if paired and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
                # torch fails here with a RuntimeError about hx's rank; same type, plainer words
                got = type(hx).__name__ if not isinstance(hx, Tensor) else f"a {hx.dim()}-D tensor"
                raise RuntimeError(f"{name}: hx must be a tuple (h_0, c_0) of two tensors, got {got}")
            want = 3 if is_batched else 2
            if any(s.dim() != want for s in states):
                dims = ", ".join(f"{s.dim()}-D" for s in states)
                what = "hx and cx" if paired else "hx"
                kind = "batched 3-D" if is_batched else "unbatched 2-D"
                raise RuntimeError(
                    f"For {kind} input, {what} should also be {want}-D but got ({dims}) tensors")
            if not is_batched:
                hx = tuple(s.unsqueeze(1) for s in states) if paired else hx.unsqueeze(1)
        if input.size(1 - batch_dim) == 0:
            raise RuntimeError(
                f"{name}: input has no time steps (sequence length 0, input shape "
                f"{tuple(input.shape)}); expected at least one")
        if hx is None and input.device.type == "cpu":
            # the CPU ops start from zero states without state tensors to read
            self.check_input(input, None)
        else:
            if hx is None:
                hx = self._zero_state(input, input.size(batch_dim))
            self.check_forward_args(input, hx, None)
        x = input.transpose(0, 1) if self.batch_first else input
        out, hidden = self._layers(x, hx, None)
        if self.batch_first:
            out = out.transpose(0, 1)
        if not is_batched:
            out = out.squeeze(batch_dim)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1)) if paired else hidden.squeeze(1)
        return out, hidden


def _lstm_cell(owner: str, coupled_gates, peephole, layer_norm) -> str:
    """The LSTM cell of the `coupled_gates`, `peephole` and `layer_norm` arguments (checked to
    be bools)."""
    _check_type(f"{owner}: coupled_gates", coupled_gates, bool, "bool")
    _check_type(f"{owner}: peephole", peephole, bool, "bool")
    _check_type(f"{owner}: layer_norm", layer_norm, bool, "bool")
    return ("lstm" + ("_coupled" if coupled_gates else "") + ("_peephole" if peephole else "")
            + ("_ln" if layer_norm else ""))


def _gru_cell(owner: str, layer_norm) -> str:
    """The GRU cell of the `layer_norm` argument (checked to be a bool)."""
    _check_type(f"{owner}: layer_norm", layer_norm, bool, "bool")
    return "gru_ln" if layer_norm else "gru"


class LSTM(RNNBase):
    """Drop-in for :class:`torch.nn.LSTM` on rnnfast's fused kernels.

    ``LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, *,
    coupled_gates=False, peephole=False, layer_norm=False, weight_drop=0.0, zoneout=0.0)``

    rnnfast's own options, off by default (the module is then exactly nn.LSTM):

    - ``coupled_gates=True`` couples the input and forget gates (CIFG: Greff et al. 2017, "LSTM:
      A Search Space Odyssey"; ONNX LSTM ``input_forget=1``): f = 1 - i, so the weights and
      biases have 3 * hidden_size rows, in gate order i, g, o.
    - ``peephole=True`` adds peephole connections (Gers & Schmidhuber 2000; ONNX LSTM's ``P``):
      parameters ``weight_ci_l{k}``, ``weight_cf_l{k}`` (not with coupled_gates) and
      ``weight_co_l{k}`` (``_reverse`` for the reverse direction), each [hidden_size];
      z_i += w_ci * c_{t-1}, z_f += w_cf * c_{t-1}, and z_o += w_co * c_t.
    - ``layer_norm=True`` is layer normalisation (Ba et al. 2016; as haste's LayerNormLSTM):
      LN(v) = (v - mean(v)) / sqrt(var(v) + 1e-5) over the features, biased variance;
      z = LN(W_ih x_t) * ln_ih_weight + LN(W_hh h_{t-1}) * ln_hh_weight + b_ih + b_hh and
      h_t = o * tanh(LN(c_t) * ln_c_weight + ln_c_bias). Parameters ``ln_ih_weight_l{k}``,
      ``ln_hh_weight_l{k}`` [G * hidden_size] (G = 4, or 3 with coupled_gates; init 1),
      ``ln_c_weight_l{k}`` (init 1) and ``ln_c_bias_l{k}`` (init 0) [hidden_size]. CPU and CUDA
      kernels (the CUDA ones while the CUDA kernels are on: see README's GPU section).
    - ``weight_drop=p`` is DropConnect on the recurrent weights (Merity et al. 2017, AWD-LSTM):
      in training each call drops W_hh with inverted dropout, one mask for all its steps;
      eval uses W_hh as is. No parameters are added.
    - ``zoneout=p`` or ``(p_c, p_h)`` (Krueger et al. 2017): in training, per step, row and
      unit, each state keeps its previous value with probability p (c with p_c, h with p_h):
      s_t = m * s_{t-1} + (1 - m) * s~_t, m ~ Bernoulli(p) (:func:`rnnfast.ops.keep_mask`:
      on CPU a counter-based generator seeded by one draw from torch's RNG per mask, per layer
      and direction, h's mask drawn before c's); the output is the zoned h. In eval the
      expectation, s_t = p * s_{t-1} + (1 - p) * s~_t.
    """

    def __init__(self, *args, coupled_gates: bool = False, peephole: bool = False,
                 layer_norm: bool = False, **kwargs):
        super().__init__("LSTM", *args,
                         cell=_lstm_cell("LSTM", coupled_gates, peephole, layer_norm), **kwargs)
        self.coupled_gates = coupled_gates
        self.peephole = peephole
        self.layer_norm = layer_norm


class GRU(RNNBase):
    """Drop-in for :class:`torch.nn.GRU` on rnnfast's fused kernels; ``weight_drop=p`` and
    ``zoneout=p`` (of h; keyword only) as for :class:`LSTM`. ``layer_norm=True`` (as haste's
    LayerNormGRU): a = LN(W_ih x_t) * ln_ih_weight + b_ih and r = LN(W_hh h_{t-1}) *
    ln_hh_weight + b_hh take the place of torch's two products, with parameters
    ``ln_ih_weight_l{k}`` and ``ln_hh_weight_l{k}`` [3 * hidden_size] (init 1)."""

    def __init__(self, *args, layer_norm: bool = False, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, cell=_gru_cell("GRU", layer_norm), **kwargs)
        self.layer_norm = layer_norm


class RNN(RNNBase):
    """Drop-in for :class:`torch.nn.RNN` (``nonlinearity='tanh'`` or ``'relu'``);
    ``weight_drop=p`` and ``zoneout=p`` (keyword only) as for :class:`LSTM`."""

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif self.nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(
                f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(mode, *args, **kwargs)


# --- cells ------------------------------------------------------------------------------------


class RNNCellBase(_ZoneoutOption, nn.Module):
    """Shared machinery of :class:`LSTMCell`, :class:`GRUCell` and :class:`RNNCell`."""

    __prepare_scriptable__ = _refuse_script

    # The cell whose description gives the parameters (names, order, shapes).
    _cell_name = "lstm"

    @property
    def _cell(self) -> _cells.Cell:
        """The description of this cell."""
        return _cells.DESCRIPTIONS[self._cell_name]

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None, *, cell: Optional[str] = None, zoneout=0.0) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        if cell is not None:  # a variant of the class's cell
            self._cell_name = _cells.cell(cell).name
        cell = self._cell
        self.zoneout = zoneout  # (validated; see _ZoneoutOption)
        sizes = _cells.extent_sizes(cell, input_size, hidden_size, 0)
        # a cell takes no projection; without bias, torch registers the biases as None
        for p in _cells.params_of(cell, True, False):
            if p.presence == "bias" and not bias:
                self.register_parameter(p.name, None)
            else:
                setattr(self, p.name, nn.Parameter(
                    torch.empty(_cells.param_shape(p, sizes), **factory_kwargs)))
        self.reset_parameters()

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if "bias" in self.__dict__ and self.bias is not True:
            s += ", bias={bias}"
        if "nonlinearity" in self.__dict__ and self.nonlinearity != "tanh":
            s += ", nonlinearity={nonlinearity}"
        return s.format(**self.__dict__) + _options_repr(self)

    def reset_parameters(self) -> None:
        _init_parameters(self)

    def _check(self, input: Tensor, states, name: str) -> bool:
        """torch's checks for a cell call; returns whether the input is batched. (Runs on every
        step of a decoding loop: each tensor's shape is read once.)"""
        if not isinstance(input, Tensor):
            raise TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
        shape = input.shape
        ndim = len(shape)
        if ndim not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {ndim}D instead")
        given = [(label, s, s.shape) for label, s in states if s is not None]
        for label, s, sshape in given:
            if len(sshape) not in (1, 2):
                raise ValueError(
                    f"{name}: Expected {label} to be 1D or 2D, got {len(sshape)}D instead")
        if shape[-1] != self.input_size:
            raise RuntimeError(
                f"{name}: input has inconsistent input_size: got {shape[-1]} "
                f"expected {self.input_size}")
        dtype = input.dtype
        w = self._parameters.get("weight_ih")  # (a dict lookup; see _weights_of)
        if w is not None:  # else (parametrized, or replaced by a tensor) _step checks the value
            _check_weight_dtype(name, input, w.dtype)
        batch = shape[0] if ndim == 2 else None
        for label, s, sshape in given:
            if len(sshape) != ndim:
                raise RuntimeError(
                    f"{name}: {label} must be {ndim}-D like the input, got {len(sshape)}-D")
            if sshape[-1] != self.hidden_size or (batch is not None and sshape[0] != batch):
                want = (batch, self.hidden_size) if batch is not None else (self.hidden_size,)
                raise RuntimeError(
                    f"{name}: {label} has shape {tuple(sshape)}, expected {want}")
            if s.dtype != dtype and not torch.is_autocast_enabled(input.device.type):
                raise RuntimeError(
                    f"{name}: {label} dtype ({s.dtype}) does not match input dtype "
                    f"({dtype})")
        return ndim == 2

    def _step(self, input: Tensor, states: List[Optional[Tensor]], cell: str,
              name: str) -> List[Tensor]:
        """One fused step of ``cell`` from the given states ([h] or [h, c]; all None: zeros, a
        single None: zeros for that state); returns the new states. ``name``: the class named
        in errors."""
        # Each weight is read once per call: a parametrized one (spectral_norm's power
        # iteration, a random mask) is computed once, as torch's cells do.
        weights = _weights_of(self, _cell_weight_names(self._cell_name, self.bias))
        if "weight_ih" not in self._parameters:
            _check_weight_dtype(name, input, weights[0].dtype)
        run = ops.layer if input.is_cpu and not _onnx.exporting() else _layer_fn(input.device)
        given = [s for s in states if s is not None]
        if not given:
            states = []
        elif len(given) < len(states):
            states = [s if s is not None else given[0].new_zeros(input.shape[0],
                                                                   self.hidden_size)
                      for s in states]
        probs = self.__dict__.get("_zoneout_p", ())
        zoneout = _zoneout_tensors(probs, self.training, (1, input.shape[0]),
                                   [self.hidden_size] * 2, input) if any(probs) else ()
        _, final = run(cell, input.unsqueeze(0), states, weights, None, False, zoneout)
        return final


class LSTMCell(RNNCellBase):
    """Drop-in for :class:`torch.nn.LSTMCell`: one fused step. ``coupled_gates=True``,
    ``peephole=True`` and ``layer_norm=True`` (rnnfast's own) as for :class:`LSTM`; the
    parameters are then ``weight_ci``, ``weight_cf`` (not with coupled_gates), ``weight_co``,
    ``ln_ih_weight``, ``ln_hh_weight``, ``ln_c_weight`` and ``ln_c_bias``. ``zoneout=p`` or
    ``(p_c, p_h)`` as for :class:`LSTM` (a mask per call in training)."""

    _cell_name = "lstm"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None, coupled_gates: bool = False, peephole: bool = False,
                 zoneout=0.0, layer_norm: bool = False) -> None:
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype,
                         cell=_lstm_cell("LSTMCell", coupled_gates, peephole, layer_norm),
                         zoneout=zoneout)
        self.coupled_gates = coupled_gates
        self.peephole = peephole
        self.layer_norm = layer_norm

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None):
        if hx is None:
            h0 = c0 = None
        else:  # (torch refuses a stacked tensor, another count and None in it too)
            if not isinstance(hx, (tuple, list)):
                raise TypeError(f"LSTMCell: hx must be a tuple (h_0, c_0) of two tensors, got "
                                f"{type(hx).__name__}")
            if len(hx) != 2:
                raise RuntimeError(f"LSTMCell: hx must be a tuple (h_0, c_0) of two tensors, "
                                   f"got {len(hx)} of them")
            h0, c0 = hx
            if not (isinstance(h0, Tensor) and isinstance(c0, Tensor)):
                raise TypeError(f"LSTMCell: hx must be a tuple (h_0, c_0) of two tensors, got "
                                f"({type(h0).__name__}, {type(c0).__name__})")
        batched = self._check(input, [("hx[0]", h0), ("hx[1]", c0)], "LSTMCell")
        if not batched:
            input = input.unsqueeze(0)
            h0 = h0.unsqueeze(0) if h0 is not None else None
            c0 = c0.unsqueeze(0) if c0 is not None else None
        h, c = self._step(input, [h0, c0], self._cell_name, "LSTMCell")
        if not batched:
            return h.squeeze(0), c.squeeze(0)
        return h, c


class GRUCell(RNNCellBase):
    """Drop-in for :class:`torch.nn.GRUCell`: one fused step; ``zoneout=p`` and
    ``layer_norm=True`` (parameters ``ln_ih_weight``, ``ln_hh_weight``) as for :class:`GRU`."""

    _cell_name = "gru"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None, zoneout=0.0, layer_norm: bool = False) -> None:
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype,
                         cell=_gru_cell("GRUCell", layer_norm), zoneout=zoneout)
        self.layer_norm = layer_norm

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        batched = self._check(input, [("hidden", hx)], "GRUCell")
        if not batched:
            input = input.unsqueeze(0)
            hx = hx.unsqueeze(0) if hx is not None else None
        h, = self._step(input, [hx], self._cell_name, "GRUCell")
        return h if batched else h.squeeze(0)


class RNNCell(RNNCellBase):
    """Drop-in for :class:`torch.nn.RNNCell` (``nonlinearity='tanh'`` or ``'relu'``);
    ``zoneout=p`` as for :class:`RNN`."""

    # the parameters come from the tanh cell's description: torch accepts any nonlinearity
    # here (and may have it changed later) and rejects an unknown one at forward
    _cell_name = "rnn_tanh"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device=None, dtype=None, zoneout=0.0) -> None:
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype,
                         zoneout=zoneout)
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        batched = self._check(input, [("hidden", hx)], "RNNCell")
        if not batched:
            input = input.unsqueeze(0)
            hx = hx.unsqueeze(0) if hx is not None else None
        h, = self._step(input, [hx], f"rnn_{self.nonlinearity}", "RNNCell")
        return h if batched else h.squeeze(0)
