"""Plain-PyTorch cell loops with the same contract as :func:`rnnfast.ops.layer`.

Three uses, all needing the op's exact semantics written as differentiable torch ops:
- the fallback on devices that have no native rnnfast kernels (slower, but correct);
- the path under torch.func transforms and forward-mode AD (grad, vjp, jacrev, jacfwd,
  hessian, vmap), which the fused ops' C++ autograd cannot take part in;
- the backward of the fused ops when autograd records it (``create_graph=True``): the
  gradients are recomputed through this loop so that they are differentiable again
  (:func:`layer_backward`).
"""
from __future__ import annotations

import functools
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from . import _cells

# One step of a cell: (gates G, x W_ih^T + b_ih, h W_hh^T + b_hh, states [h] or [h, c], the
# named weights) -> the new states. Each cell's pointwise math, written as torch ops.
Step = Callable[[int, torch.Tensor, torch.Tensor, List[torch.Tensor], Dict[str, torch.Tensor]],
                List[torch.Tensor]]


def _lstm_family_step(coupled, gates, gi, gh, state, w):
    """torch's LSTM; with ``coupled`` f = 1 - i (gates i, g, o); with the peephole weights
    among ``w`` (weight_ci, weight_cf unless coupled, weight_co), c_{t-1} enters i and f and
    c_t enters o through them (csrc/core/cell_math.h)."""
    h, c_prev = state
    if coupled:
        zi, zg, zo = (gi + gh).chunk(gates, dim=-1)
    else:
        zi, zf, zg, zo = (gi + gh).chunk(gates, dim=-1)
    peephole = w.get("weight_ci") is not None
    if peephole:
        zi = zi + w["weight_ci"] * c_prev
    i = torch.sigmoid(zi)
    if coupled:
        f = 1 - i
    else:
        f = torch.sigmoid(zf + w["weight_cf"] * c_prev if peephole else zf)
    c = f * c_prev + i * torch.tanh(zg)
    if peephole:
        zo = zo + w["weight_co"] * c
    # layer normalisation of the output stage: tanh(LN(c_t) * ln_c_weight + ln_c_bias)
    out = c if w.get("ln_c_weight") is None else torch.addcmul(
        w["ln_c_bias"], _normalized(c), w["ln_c_weight"])
    h = torch.sigmoid(zo) * torch.tanh(out)
    if w.get("weight_hr") is not None:
        h = F.linear(h, w["weight_hr"])
    return [h, c]


def _gru_step(gates, gi, gh, state, w):
    h, = state
    xr, xz, xn = gi.chunk(gates, dim=-1)
    hr, hz, hn = gh.chunk(gates, dim=-1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return [(1 - z) * n + z * h]


def _elman_step(activation, gates, gi, gh, state, w):
    return [activation(gi + gh)]


_STEPS: Dict[str, Step] = {
    "lstm": functools.partial(_lstm_family_step, False),
    "gru": _gru_step,
    "rnn_tanh": functools.partial(_elman_step, torch.tanh),
    "rnn_relu": functools.partial(_elman_step, torch.relu),
    "lstm_coupled": functools.partial(_lstm_family_step, True),
    "lstm_peephole": functools.partial(_lstm_family_step, False),
    "lstm_coupled_peephole": functools.partial(_lstm_family_step, True),
    "lstm_ln": functools.partial(_lstm_family_step, False),
    "lstm_coupled_ln": functools.partial(_lstm_family_step, True),
    "lstm_peephole_ln": functools.partial(_lstm_family_step, False),
    "lstm_coupled_peephole_ln": functools.partial(_lstm_family_step, True),
    "gru_ln": _gru_step,
}


def _normalized(v):
    """(v - mean(v)) / sqrt(var(v) + eps) over the last dimension, biased variance (the layer
    normalisation of the layer-normalised cells, without gain; csrc/core/cells.h)."""
    # (in v's dtype: under CUDA autocast layer_norm computes in float32, and its result would
    # turn the rest of the cell float32 where the layer runs in the autocast dtype)
    return F.layer_norm(v, v.shape[-1:], eps=_cells.LAYER_NORM_EPS).to(v.dtype)


def _projections(x, h, w):
    """x W_ih^T + b_ih and h W_hh^T + b_hh; in a layer-normalised cell each product is
    normalised over its G*H columns and scaled by its gain (ln_ih_weight, ln_hh_weight)
    before its bias is added."""
    if w.get("ln_ih_weight") is None:
        return F.linear(x, w["weight_ih"], w.get("bias_ih")), F.linear(h, w["weight_hh"],
                                                                     w.get("bias_hh"))
    sides = []
    for v, weight, gain, bias in ((x, "weight_ih", "ln_ih_weight", "bias_ih"),
                                  (h, "weight_hh", "ln_hh_weight", "bias_hh")):
        g = _normalized(F.linear(v, w[weight])) * w[gain]
        sides.append(g if w.get(bias) is None else g + w[bias])
    return sides[0], sides[1]


def _step_of(info: _cells.Cell) -> Step:
    try:
        return _STEPS[info.name]
    except KeyError:
        raise NotImplementedError(
            f"rnnfast._reference has no step for the cell {info.name!r} (it knows "
            f"{', '.join(_STEPS)}); add its math to _STEPS") from None


def _zoneout_at(z, t):
    """The zoneout of one state at step t: its mask's rows [B, S_k], or the 0-D probability."""
    return z if z.dim() == 0 else z[t]


# c10's names of the dtypes, as the kernels' messages print them (e.g. "Float [3] on cpu")
_DTYPE_NAMES = {torch.float64: "Double", torch.float32: "Float", torch.float16: "Half",
                torch.bfloat16: "BFloat16", torch.int64: "Long", torch.int32: "Int",
                torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
                torch.bool: "Bool"}


def _described(t: torch.Tensor) -> str:
    """A tensor's dtype, shape and device as the kernels' messages give them."""
    return f"{_DTYPE_NAMES.get(t.dtype, t.dtype)} {list(t.shape)} on {t.device}"


def _values(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor under ``t``'s torch.func wrappers: under vmap a batched ``t``
    (lengths vmapped along with the input) holds every sample's values, which min/max then
    read (.item() of a batched tensor is refused), e.g. per-sample grads vmap(grad(f))."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(t):
        t = functorch.get_unwrapped(t)
    return t


def _values_readable(values: torch.Tensor) -> bool:
    """Whether lengths' values can be read here: not while torch.compile, make_fx or another
    mode traces the call (a fake or proxy tensor has none), nor from a meta tensor."""
    from torch._subclasses.fake_tensor import is_fake
    return not (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
                or torch._C._is_torch_function_mode_enabled() or values.is_meta
                or is_fake(values))


def _check_lengths(lengths: torch.Tensor, input: torch.Tensor) -> None:
    """The kernels' checks of ``lengths`` (csrc/torch/common.h, check_args), with their
    messages: a 1-D int64 CPU tensor (on every device); with a padded [T, B, I] input of size
    B, values in [0, T]; with a packed [N, I] input non-negative and non-increasing, summing to
    N. The values are not read while a tracer runs the call (_values_readable)."""
    well_formed = (lengths.device.type == "cpu" and lengths.dtype == torch.int64
                   and lengths.dim() == 1)
    if input.dim() == 2:
        if not well_formed:
            raise RuntimeError(f"rnnfast: lengths must be a 1-D int64 CPU tensor, got "
                               f"{_described(lengths)}")
        values = _values(lengths)
        if values.dim() != 1:
            raise RuntimeError("rnnfast: the lengths of a packed 2-D input cannot be batched "
                               "(vmap over them is not supported); vmap over padded input "
                               "with its lengths instead")
        if not _values_readable(values):
            return
        N, total, previous = input.shape[0], 0, None
        for b, n in enumerate(values.tolist()):
            if n < 0 or (previous is not None and n > previous):
                raise RuntimeError(
                    "rnnfast: with a packed 2-D input, lengths must be non-negative and "
                    f"non-increasing, got {list(lengths.shape)} with lengths[{b}] = {n}")
            if n > N - total:
                raise RuntimeError("rnnfast: a packed 2-D input has one row per active step, "
                                   f"but lengths add up to more than its {N} rows")
            total, previous = total + n, n
        if total != N:
            raise RuntimeError("rnnfast: a packed 2-D input has one row per active step, "
                               f"sum(lengths) = {total}, but it has {N} rows")
        return
    if input.dim() != 3:
        return  # (the layer refuses the input itself)
    T, B = input.shape[0], input.shape[1]
    if not well_formed or lengths.shape[0] != B:
        raise RuntimeError(f"rnnfast: lengths must be a 1-D int64 CPU tensor of size {B}, got "
                           f"{_described(lengths)}")
    values = _values(lengths)
    if B > 0 and _values_readable(values):
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi > T:
            raise RuntimeError(f"rnnfast: lengths must lie in [0, {T}], got values in "
                               f"[{lo}, {hi}]")


def _padded_layer(info, step, input, state, w, lengths, reverse, zoneout=()):
    T, B, _ = input.shape
    H, P = _cells.layer_sizes(info, w)
    if not state:
        state = [input.new_zeros(shape) for shape in _cells.state_shapes(info, B, H, P)]
    state = list(state)
    outs = [None] * T
    steps = range(T - 1, -1, -1) if reverse else range(T)
    active_all = None
    if lengths is not None:
        active_all = lengths.to(input.device).unsqueeze(0) > torch.arange(
            T, device=input.device).unsqueeze(1)  # [T, B]
    for t in steps:
        gi, gh = _projections(input[t], state[0], w)
        new = step(info.gates, gi, gh, state, w)
        if zoneout:  # s_t = m s_{t-1} + (1 - m) s~_t
            new = [m * s + (1 - m) * n for n, s, m in
                   ((n, s, _zoneout_at(z, t).to(n.dtype)) for n, s, z in zip(new, state, zoneout))]
        if active_all is not None:
            active = active_all[t].unsqueeze(1)
            state = [torch.where(active, n, s) for n, s in zip(new, state)]
            outs[t] = torch.where(active, new[0], torch.zeros_like(new[0]))
        else:
            state = new
            outs[t] = new[0]
    out = torch.stack(outs, 0) if T > 0 else input.new_zeros(0, B, P or H)
    return out, state


def autocast_cuda(input, state, weights, zoneout):
    """Under CUDA autocast, (input, state, weights, zoneout) in the autocast dtype (float64
    and 0-D probabilities left alone), as the layers run there: rnnfast's CUDA kernels and
    this loop in that dtype, as cuDNN's RNNs do (their outputs come in it). Otherwise the
    arguments as they are."""
    if not (input.is_cuda and torch.is_autocast_enabled("cuda")):
        return input, state, weights, zoneout
    dt = torch.get_autocast_dtype("cuda")

    def cast(t):
        return t.to(dt) if t.is_floating_point() and t.dtype != torch.float64 else t

    return (cast(input), [cast(t) for t in state], [cast(t) for t in weights],
            [cast(t) if t.dim() else t for t in zoneout])


def layer(cell: str, input: torch.Tensor, state: Optional[Sequence[torch.Tensor]],
          weights: Sequence[torch.Tensor], lengths: Optional[torch.Tensor] = None,
          reverse: bool = False, zoneout: Sequence[torch.Tensor] = ()
          ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """One layer, one direction: (output, final states), as :func:`rnnfast.ops.layer`.

    ``state`` is None or [] (zeros) or the cell's initial states ([h] or [h, c]); ``weights``
    the layer's parameters in the ops' order (weight_ih, weight_hh[, bias_ih, bias_hh]
    [, weight_hr], then the cell's own, e.g. weight_ci, weight_cf, weight_co). ``input`` is [T, B, I], or the packed rows [N, I] of a PackedSequence with
    their non-increasing ``lengths``. With ``lengths``, steps past a sequence's end leave its
    state unchanged and give zero output rows; the reverse direction starts at each sequence's
    end. ``lengths`` is a 1-D int64 CPU tensor, checked as the kernels check it (the same
    RuntimeErrors). ``zoneout`` is empty or one tensor per state, a 0-D probability or a mask
    shaped like the state's rows (see :mod:`rnnfast.ops`).
    """
    info = _cells.cell(cell)
    step = _step_of(info)
    state = list(state) if state is not None else []
    input, state, weights, zoneout = autocast_cuda(input, state, weights, list(zoneout))
    _cells.check_state(info, state)
    w = dict(zip(_cells.weight_names(info, len(weights)), weights))
    zoneout = list(zoneout)
    if zoneout and len(zoneout) != info.states:
        raise RuntimeError(f"rnnfast: zoneout must be empty (no zoneout) or hold one tensor per "
                           f"state of the {info.name} cell ({info.states}), got {len(zoneout)}")
    no_steps = RuntimeError("rnnfast: input must have at least one time step")
    if input.dim() == 3 and input.shape[0] == 0:  # (checked before lengths, as the kernels do)
        raise no_steps
    if lengths is not None:
        _check_lengths(lengths, input)
    if input.dim() != 2:
        return _padded_layer(info, step, input, state, w, lengths, reverse, zoneout)
    if lengths is None:
        raise RuntimeError("rnnfast: a packed 2-D input needs lengths (the sequence lengths, "
                           "non-increasing)")
    values = _values(lengths)  # (the steps are the longest sequence's, lengths[0])
    if _values_readable(values) and (values.numel() == 0 or int(values[0]) == 0):
        raise no_steps
    # packed rows: (t, b) active iff lengths[b] > t; with non-increasing lengths (checked,
    # summing to the rows) the active pairs in row-major (t, b) order are exactly
    # PackedSequence.data's order
    B = lengths.shape[0]
    T = int(lengths.max()) if B > 0 else 0
    active = lengths.unsqueeze(0) > torch.arange(T).unsqueeze(1)  # [T, B]
    tt, bb = (i.to(input.device) for i in active.nonzero(as_tuple=True))
    padded = input.new_zeros(T, B, input.shape[1]).index_put((tt, bb), input)
    zoneout = [z if z.dim() == 0 else z.new_zeros(T, B, z.shape[1]).index_put((tt, bb), z)
               for z in zoneout]
    out, final = _padded_layer(info, step, padded, state, w, lengths, reverse, zoneout)
    return out[tt, bb], final


def layer_backward(cell: str, reverse: bool, grad_output: Optional[torch.Tensor],
                   grad_state: Sequence[Optional[torch.Tensor]], input: torch.Tensor,
                   state: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
                   lengths: Optional[torch.Tensor], zoneout: Sequence[torch.Tensor] = ()
                   ) -> Tuple[Optional[torch.Tensor], List[Optional[torch.Tensor]],
                              List[Optional[torch.Tensor]]]:
    """Gradients of one layer op, themselves differentiable (for ``create_graph=True``).

    Called by the fused op's autograd (csrc/torch/autograd.cpp) when autograd records the
    backward pass: the forward is recomputed with this module's loop and differentiated with
    ``create_graph=True``, so the gradients depend differentiably on the forward's inputs
    and on the incoming gradients. ``grad_state`` holds the gradient of each final state (None
    where there is none); ``state`` is the given initial states ([] for zeros). Returns
    (grad_input, one gradient per tensor of ``state``, one per weight): None for a tensor that
    needs none.
    """
    state, weights = list(state), list(weights)
    inputs = [input] + state + weights
    wanted = [i for i, t in enumerate(inputs) if t.requires_grad]
    result: List[Optional[torch.Tensor]] = [None] * len(inputs)
    if wanted:
        with torch.enable_grad():
            out, final = layer(cell, input, state, weights, lengths, reverse, zoneout)
            pairs = [(o, g) for o, g in zip([out] + final, [grad_output] + list(grad_state))
                     if g is not None]
            if pairs:
                grads = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wanted],
                                            [g for _, g in pairs], create_graph=True,
                                            allow_unused=True)
            else:
                grads = [None] * len(wanted)
        for i, g in zip(wanted, grads):
            result[i] = g if g is not None else torch.zeros_like(inputs[i])
    return result[0], result[1:1 + len(state)], result[1 + len(state):]
