"""Typed wrappers over torch.ops.rnnfast.*: fake (meta) kernels, autocast; autograd is in C++.

One forward op runs one layer in one direction over a whole sequence, for every cell; one
backward op gives its gradients. Their schemas name no cell and no parameter:

    layer(cell, input[T,B,I], state, weights, lengths[B] int64?, reverse, training,
          zoneout=None) -> (output[T,B,S], state_out, workspace)
    layer_backward(cell, grad_output?, grad_state, input, weights, lengths?, workspace,
                   reverse, zoneout=None, output_mask=None)
        -> (grad_input, grad_state, grad_weights)

``cell`` is one of :data:`CELLS` (their descriptions come from the C++ core, see
:mod:`rnnfast._cells`). ``state`` is empty (zero initial states) or the cell's states:
[h[B,S]] or, for a cell with a cell state (LSTM), [h[B,S], c[B,H]]; ``state_out`` holds the
final states the same way. ``weights`` holds the layer's parameters in this order:
weight_ih[G*H,I], weight_hh[G*H,S], then bias_ih[G*H], bias_hh[G*H] if it has biases, then
weight_hr[P,H] if it has a projection (LSTM proj_size), then the cell's own parameters
(``_cells.cell(name).params``: the peephole cells' weight_ci, weight_cf, weight_co, each [H]);
S = P with a projection, else H, and G is the cell's number of gates. ``grad_state`` has one entry per state (each may be None) and
``grad_weights`` one gradient per weight. ``output_mask`` is None (every gradient) or one bool
per gradient in that order (grad_input, each grad_state entry, each grad_weights entry): one
not asked for is not computed and comes back None (autograd asks only for what it needs). ``training=True`` saves the activations backward
needs in ``workspace``; with ``training=False`` it is empty. ``zoneout`` is None (or empty)
or holds one tensor per state: a 0-D probability p (s_t = p s_{t-1} + (1 - p) s~_t, the
expectation) or a mask m shaped like the state's rows, [T,B,S] for h and [T,B,H] for c, of the
input's dtype (s_t = m s_{t-1} + (1 - m) s~_t; 1 keeps the previous value); the output is the
zoned h.

On CPU a fourth and fifth op run both directions of a bidirectional layer in one call, the
forward direction's arguments first and then the reverse one's (same input and lengths):

    bidirectional_layer(cell, input, state, state_reverse, weights, weights_reverse, lengths,
                        training, zoneout=None, zoneout_reverse=None)
        -> (output, state_out, workspace, output_reverse, state_out_reverse,
            workspace_reverse)
    bidirectional_layer_backward(cell, grad_output?, grad_state, grad_output_reverse?,
                                 grad_state_reverse, input, weights, weights_reverse, lengths,
                                 workspace, workspace_reverse, zoneout=None,
                                 zoneout_reverse=None, output_mask=None)
        -> (grad_input, grad_state, grad_weights, grad_state_reverse, grad_weights_reverse)

On two threads, while each direction's weight_hh fits twice the L2 cache, they run the
directions at the same time, one core each (csrc/core/rnn.h: layer_forward_pair), else one
after the other; the results are bit-identical to two ``layer`` calls either way, and
grad_input is the sum of the two directions' input gradients. The pair's output_mask: grad_input,
then the forward direction's state and weight entries, then the reverse direction's.

On CPU a sixth op runs two stacked layers of one direction in one call, for inference (no
gradients: it refuses to be differentiated), the lower layer's arguments first, then the
upper one's, whose input is the lower one's output (same lengths):

    stacked_layers(cell, input, state, state_upper, weights, weights_upper, lengths,
                   zoneout=None, zoneout_upper=None)
        -> (output, state_out, output_upper, state_out_upper)

On two threads, for the small layers where it was measured to gain (csrc/core/cpu/stack.cpp:
stack_concurrent), the layers run as a wavefront, one core each (csrc/core/rnn.h:
layer_forward_stack), else one after the other; the results are bit-identical to two ``layer``
calls either way.

One more op, ``keep_mask(seed, p, size, dtype)``, makes zoneout's training masks on CPU (see
:func:`keep_mask`).

On CPU the input may also be packed, [N, I] with N = sum(lengths): the rows of the
active (t, b) in PackedSequence.data order (time-major), with non-increasing lengths; the
output (and workspace) are then packed the same way, [N, S].
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import torch
import torch.autograd.forward_ad as _fwad

from . import _C  # noqa: F401  (loads the library that defines the ops)
from . import _cells, _reference

# Whether a run on a real GPU (bench/gpu_check.sh) verified the CUDA sources this extension
# was built from: derived from the build's hash of those sources and the committed manifest of
# verified hashes (_cuda_verified.py), never set by hand.
from ._cuda_verified import cuda_kernels_verified

CUDA_KERNELS_VERIFIED = cuda_kernels_verified()
# RNNFAST_CUDA_KERNELS=1 forces the CUDA kernels on, =0 forces the reference loop.
_CUDA_KERNELS_ENV = os.environ.get("RNNFAST_CUDA_KERNELS", "")


def has_native_kernels(device_type: str) -> bool:
    """Whether the fused ops run natively on this device type (else modules use the
    plain-PyTorch reference loop)."""
    if device_type == "cpu":
        return True
    if device_type == "cuda" and _C.cuda_built:
        if _CUDA_KERNELS_ENV in ("0", "1"):
            return _CUDA_KERNELS_ENV == "1"
        return CUDA_KERNELS_VERIFIED
    return False


def workspace_dtype(input: torch.Tensor) -> torch.dtype:
    """The dtype of the saved workspace: the input's on CPU; on CUDA the accumulation type
    (float32 for 16-bit inputs)."""
    if input.device.type == "cuda" and input.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return input.dtype


# The cells the ops take, and their gate counts, from the C++ description.
CELLS = tuple(_cells.DESCRIPTIONS)
GATES = {name: info.gates for name, info in _cells.DESCRIPTIONS.items()}


def workspace_cols(cell: str, hidden: int, proj: int) -> int:
    """Columns of the workspace a forward pass saves per (t, b) (layout: csrc/core/cells.h)."""
    return _cells.workspace_cols(_cells.cell(cell), hidden, proj)


def _rows(input: torch.Tensor, lengths: Optional[torch.Tensor]) -> Tuple[tuple, int]:
    """Leading dimensions of input-shaped tensors, and the batch size: (T, B) for a [T, B, I]
    input; (N,) for a packed [N, I] input (PackedSequence.data order, CPU only), whose batch
    size is the number of lengths."""
    if input.dim() == 2:
        if lengths is None:
            raise RuntimeError("rnnfast: a packed 2-D input needs lengths (the sequence "
                               "lengths, non-increasing)")
        return (input.shape[0],), lengths.shape[0]
    return (input.shape[0], input.shape[1]), input.shape[1]


# The innermost active torch.func transform, or None.
_peek_functorch = torch._C._functorch.peek_interpreter_stack

# The forward op's overload, looked up once rather than through the packet on every call.
_LAYER = torch.ops.rnnfast.layer.default
_KEEP_MASK = torch.ops.rnnfast.keep_mask.default


def _fake_check_devices(op, info, input, state, weights, lengths, zoneout):
    """The kernels' device checks (common.h: check_tensor, the lengths' check), made by the
    fake kernel too: under the Meta key (a meta weight with a CPU input dispatches there) it
    would otherwise return empty outputs for a call the kernels refuse."""
    def check(t, name):
        if t.device != input.device:
            raise RuntimeError(f"rnnfast::{op}({info.name}): {name} is on {t.device} but the "
                               f"input is on {input.device}")
    for k, t in enumerate(state):
        check(t, f"state[{k}] ({_cells.STATE_NAMES[k]})")
    for name, t in zip(_cells.weight_names(info, len(weights)), weights):
        check(t, name)
    zoneout = zoneout or ()
    if len(zoneout) not in (0, info.states):
        raise RuntimeError(f"rnnfast::{op}({info.name}): zoneout must be empty (no zoneout) or "
                           f"hold one tensor per state ({_cells.state_list(info)}), got "
                           f"{len(zoneout)} tensors")
    for k, t in enumerate(zoneout):
        name = f"zoneout[{k}] ({_cells.STATE_NAMES[k]})"
        if t.dim():  # a mask
            check(t, name)
        elif t.device.type != "cpu" and t.device != input.device:  # a probability (common.h)
            raise RuntimeError(f"rnnfast::{op}({info.name}): {name} (a probability) must be on "
                               f"the CPU or on the input's device ({input.device}), got one on "
                               f"{t.device}")
    if lengths is not None and lengths.device.type != "cpu":
        raise RuntimeError(f"rnnfast::{op}({info.name}): lengths must be a 1-D int64 tensor on "
                           f"the CPU, got one on {lengths.device}")


@torch.library.register_fake("rnnfast::layer")
def _fake(cell, input, state, weights, lengths, reverse, training, zoneout=None, op="layer"):
    # (op: the name the kernels' messages give the call, as csrc/torch/ops.cpp names them)
    info = _cells.cell(cell)
    _cells.check_state(info, state)
    _fake_check_devices(op, info, input, state, weights, lengths, zoneout)
    w = dict(zip(_cells.weight_names(info, len(weights)), weights))
    rows, B = _rows(input, lengths)
    H, P = _cells.layer_sizes(info, w)
    S = P if P > 0 else H
    state_out = [input.new_empty(shape) for shape in _cells.state_shapes(info, B, H, P)]
    ws_dtype = workspace_dtype(input)
    ws = (input.new_empty(rows + (_cells.workspace_cols(info, H, P),), dtype=ws_dtype)
          if training else input.new_empty((0,), dtype=ws_dtype))
    return input.new_empty(rows + (S,)), state_out, ws


@torch.library.register_fake("rnnfast::layer_backward")
def _fake_backward(cell, grad_output, grad_state, input, weights, lengths, workspace, reverse,
                   zoneout=None, output_mask=None):
    _check_output_mask(cell, "layer_backward", output_mask, [len(weights)])
    return _fake_grads(cell, input, weights, lengths, output_mask)


def _fake_grads(cell, input, weights, lengths, mask):
    """One direction's gradients (grad_input, grad_state, grad_weights) as empty tensors, None
    where ``mask`` (one bool per gradient; None: all) does not ask for one."""
    info = _cells.cell(cell)
    w = dict(zip(_cells.weight_names(info, len(weights)), weights))
    _, B = _rows(input, lengths)
    H, P = _cells.layer_sizes(info, w)
    shapes = ([input.shape] + list(_cells.state_shapes(info, B, H, P))
              + [t.shape for t in weights])
    if mask is None:
        mask = [True] * len(shapes)
    out = [input.new_empty(s) if m else None for s, m in zip(shapes, mask)]
    return out[0], out[1:1 + info.states], out[1 + info.states:]


def _check_output_mask(cell, op, output_mask, weight_counts):
    """A ValueError, as the kernels', if output_mask is neither None nor one bool per gradient
    the op returns (grad_input, then per direction its states' and its weights')."""
    if output_mask is None:
        return
    states = _cells.cell(cell).states
    n = 1 + sum(states + w for w in weight_counts)
    if len(output_mask) != n:
        parts = ["grad_input"]
        for i, w in enumerate(weight_counts):
            suffix = "_reverse" if i else ""
            parts += [f"{states} for grad_state{suffix}", f"{w} for grad_weights{suffix}"]
        raise ValueError(f"rnnfast::{op}({cell}): output_mask must be None or hold {n} bools "
                         f"({', '.join(parts)}), got {len(output_mask)}")


@torch.library.register_fake("rnnfast::bidirectional_layer")
def _fake_pair(cell, input, state, state_reverse, weights, weights_reverse, lengths, training,
               zoneout=None, zoneout_reverse=None):
    return (_fake(cell, input, state, weights, lengths, False, training, zoneout,
                  "bidirectional_layer")
            + _fake(cell, input, state_reverse, weights_reverse, lengths, True, training,
                    zoneout_reverse, "bidirectional_layer, reverse direction"))


@torch.library.register_fake("rnnfast::stacked_layers")
def _fake_stack(cell, input, state, state_upper, weights, weights_upper, lengths, zoneout=None,
                zoneout_upper=None):
    out, state_out, _ = _fake(cell, input, state, weights, lengths, False, False, zoneout,
                              "stacked_layers")
    out_u, state_out_u, _ = _fake(cell, out, state_upper, weights_upper, lengths, False, False,
                                  zoneout_upper, "stacked_layers, upper layer")
    return out, state_out, out_u, state_out_u


@torch.library.register_fake("rnnfast::bidirectional_layer_backward")
def _fake_pair_backward(cell, grad_output, grad_state, grad_output_reverse, grad_state_reverse,
                        input, weights, weights_reverse, lengths, workspace, workspace_reverse,
                        zoneout=None, zoneout_reverse=None, output_mask=None):
    _check_output_mask(cell, "bidirectional_layer_backward", output_mask,
                       [len(weights), len(weights_reverse)])
    mask = r_mask = None
    if output_mask is not None:
        split = 1 + _cells.cell(cell).states + len(weights)
        mask = list(output_mask[:split])
        r_mask = [False] + list(output_mask[split:])  # grad_input: the forward direction's
    grad_input, grad_state, grad_weights = _fake_grads(cell, input, weights, lengths, mask)
    _, grad_state_r, grad_weights_r = _fake_grads(cell, input, weights_reverse, lengths, r_mask)
    return grad_input, grad_state, grad_weights, grad_state_r, grad_weights_r


@torch.library.register_fake("rnnfast::keep_mask")
def _fake_keep_mask(seed, p, size, dtype):
    return seed.new_empty(size, dtype=dtype)


def keep_mask(shape: Sequence[int], p: float, dtype: torch.dtype,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """A zoneout mask of ``shape``: 1 (keep the previous value) with probability ``p``, else 0.

    On CPU (float32/float64) one seed is drawn from torch's default CPU generator (so
    ``torch.manual_seed`` reproduces the mask) and the elements come from rnnfast's
    counter-based generator (``rnnfast::keep_mask``, csrc/core/random.h: SplitMix64 word i // 2
    of the seed, half i % 2, compared with p * 2^32), filled on the active SIMD path: a
    100 x 32 x 128 mask in 0.10 ms against ``torch.bernoulli``'s 2.2 ms on 2 threads of this
    project's machine (bench/results/variants-2026-11-30b.md). Elsewhere ``torch.bernoulli``
    on the device's generator.
    """
    shape = tuple(shape)
    if torch.device(device).type != "cpu" or dtype not in (torch.float32, torch.float64):
        return torch.bernoulli(torch.full(shape, p, dtype=dtype, device=device))
    seed = torch.randint(0, 2**63 - 1, (), dtype=torch.int64, device="cpu")
    return _KEEP_MASK(seed, float(p), list(shape), dtype)


# Autograd: registered in C++ (csrc/torch/autograd.cpp) under the Autograd key.
# Under autocast the fused ops run in float32 (they have no bf16/fp16 kernels): bf16/fp16
# inputs, states and weights are cast up; float64 is left alone (autocast's own fp32 policy).
torch.library.register_autocast("rnnfast::layer", "cpu", torch.float32)
torch.library.register_autocast("rnnfast::bidirectional_layer", "cpu", torch.float32)
torch.library.register_autocast("rnnfast::stacked_layers", "cpu", torch.float32)

_PAIR = torch.ops.rnnfast.bidirectional_layer.default
_STACK = torch.ops.rnnfast.stacked_layers.default


def _reference_only() -> bool:
    """Whether the layers must run as the plain-PyTorch loop: under forward-mode AD or a
    torch.func transform (see :func:`layer`)."""
    return _fwad._current_level >= 0 or (not torch.compiler.is_compiling()
                                         and _peek_functorch() is not None)


def _needs_grad(input, *lists) -> bool:
    """Whether autograd records the call. The callers pass the zoneout lists too: a mask
    that requires grad must reach the Autograd kernel, which refuses it (zoneout masks are
    constants to the kernels; autograd.cpp: check_constant_masks), rather than go straight to
    the CPU kernel and lose its gradient silently.

    Under the TorchScript tracer, always: the tracer records the answer as a constant of the
    graph, and a traced module must give gradients when run with autograd, as a traced
    nn.LSTM does (torch.jit.trace's own check traces the module again under no_grad and
    refuses a graph that differs). The traced graph then saves the backward's activations
    on every call, also under no_grad."""
    if _tracing() is not None:
        return True
    try:
        return torch.is_grad_enabled() and (
            input.requires_grad or any(t.requires_grad for l in lists if l for t in l))
    except AttributeError:  # a non-tensor entry: the full route, whose schema refuses it
        return True


# A call that records no autograd, with a CPU input, every tensor a plain torch.Tensor or
# nn.Parameter (no subclass) and nothing else that must see the op (no torch.compile,
# TorchScript tracer, profiler, autocast, torch function or dispatch mode), reaches the CPU
# kernel with the same arguments whichever route it takes: the dispatcher's Autograd kernel
# would only run the forward (autograd.cpp, LayerFunction), and the glue materializes the
# negated views and ZeroTensors the dispatcher's fallbacks would have (common.h: materialized).
# So such a call goes to the CPU kernel straight: _C.layer_cpu_inference, a pybind11 entry to
# the kernel (csrc/torch/ops.cpp: forward_op) that skips the dispatcher and its boxing of the
# arguments into IValues. Of the 8-9 us a one-step call costs through the full dispatch it saves
# about 2-3 through OpOverload.redispatch to the CPU key (the route's first form) and about
# 2 more this way (a cell in a Python loop pays it every step; bench/results/
# cpu-2026-12-02-zen5.md, cpu-2026-12-02b-zen5.md, bench/straight_ab.py).
# Not seen from here: observers of the dispatcher that do not turn the profiler flag on (an
# ExecutionTraceObserver alone, on-demand profiling started from outside): under those the op
# records no event on this route. RNNFAST_STRAIGHT_DISPATCH=0 (read at import) sends every call
# through the full dispatch.
_STRAIGHT = os.environ.get("RNNFAST_STRAIGHT_DISPATCH", "1") != "0"
_LAYER_CPU = _C.layer_cpu_inference
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_profiling = torch._C._autograd._profiler_enabled
_tracing = torch._C._get_tracing_state
_function_mode = torch._C._is_torch_function_mode_enabled
_dispatch_modes = torch._C._len_torch_dispatch_stack
_compiling = torch.compiler.is_compiling
_autocast = torch._C._is_any_autocast_enabled  # (the autocast kernels above cast bf16 up)


def _straight_to_cpu(input, lengths, state, weights, zoneout) -> bool:
    """Whether a call that records no autograd may skip the dispatcher (see above). (Loops
    rather than all() over a generator: this runs on every step of a cell loop.)"""
    if not _STRAIGHT or type(input) not in _PLAIN or not input.is_cpu or (
            lengths is not None and type(lengths) not in _PLAIN):
        return False
    for group in (state, weights, zoneout):
        for t in group:
            if type(t) not in _PLAIN:
                return False
    return not (_compiling() or _tracing() is not None or _profiling() or _autocast()
                or _function_mode() or _dispatch_modes())


def layer(cell: str, input: torch.Tensor, state: Optional[Sequence[torch.Tensor]],
          weights: Sequence[torch.Tensor], lengths: Optional[torch.Tensor] = None,
          reverse: bool = False, zoneout: Sequence[torch.Tensor] = ()
          ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """One layer, one direction over ``input`` [T, B, I]: returns (output, final states).

    ``state`` is None or [] for zero initial states, else the cell's states ([h] or [h, c]);
    ``weights`` the layer's parameters in the ops' order (see the top of this module). The
    final states come as a list the same way. ``zoneout``: as the op's (the top of this
    module); empty for none.

    Saves activations for backward only when autograd will need them. Under CUDA autocast
    the CUDA kernels run in the autocast dtype (float16 or bfloat16), as cuDNN's do.

    Under a torch.func transform (grad, vjp, jacrev, jacfwd, hessian, vmap) or forward-mode
    AD, the layer runs as the plain-PyTorch loop of :mod:`rnnfast._reference` instead: the
    fused ops' autograd is a C++ ``torch::autograd::Function`` (kept in C++ for speed), which
    functorch refuses and which has no forward-mode derivative. Same results, slower.
    """
    if state is None:
        state = []
    if _reference_only():
        return _reference.layer(cell, input, state, weights, lengths, reverse, zoneout)
    if input.is_cuda:
        input, state, weights, zoneout = _reference.autocast_cuda(input, state, weights,
                                                                  zoneout)
    training = _needs_grad(input, state, weights, zoneout)
    zoneout = list(zoneout) if zoneout else None
    if not training and _straight_to_cpu(input, lengths, state, weights, zoneout or ()):
        out, state_out = _LAYER_CPU(cell, input, state, weights, lengths, reverse, zoneout)
    else:
        out, state_out, _ = _LAYER(cell, input, state, weights, lengths, reverse, training,
                                   zoneout)
    return out, state_out


def bidirectional_layer(cell: str, input: torch.Tensor,
                        state: Optional[Sequence[torch.Tensor]],
                        state_reverse: Optional[Sequence[torch.Tensor]],
                        weights: Sequence[torch.Tensor],
                        weights_reverse: Sequence[torch.Tensor],
                        lengths: Optional[torch.Tensor] = None,
                        zoneout: Sequence[torch.Tensor] = (),
                        zoneout_reverse: Sequence[torch.Tensor] = ()):
    """Both directions of a bidirectional layer over the same CPU ``input``: returns
    ((output, final states), (output_reverse, final states_reverse)), the same as
    ``layer(..., reverse=False)`` and ``layer(..., reverse=True)`` with each direction's
    state, weights and zoneout, bit for bit. Under a torch.func transform or forward-mode AD,
    two plain-PyTorch loops (as :func:`layer`)."""
    state = [] if state is None else state
    state_reverse = [] if state_reverse is None else state_reverse
    if _reference_only():
        return (_reference.layer(cell, input, state, weights, lengths, False, zoneout),
                _reference.layer(cell, input, state_reverse, weights_reverse, lengths, True,
                                 zoneout_reverse))
    training = _needs_grad(input, state, weights, state_reverse, weights_reverse, zoneout,
                           zoneout_reverse)
    y, s, _, y_r, s_r, _ = _PAIR(cell, input, list(state), list(state_reverse), list(weights),
                                 list(weights_reverse), lengths, training,
                                 list(zoneout) if zoneout else None,
                                 list(zoneout_reverse) if zoneout_reverse else None)
    return (y, s), (y_r, s_r)


def stacked_layers(cell: str, input: torch.Tensor, state: Optional[Sequence[torch.Tensor]],
                   state_upper: Optional[Sequence[torch.Tensor]],
                   weights: Sequence[torch.Tensor], weights_upper: Sequence[torch.Tensor],
                   lengths: Optional[torch.Tensor] = None, zoneout: Sequence[torch.Tensor] = (),
                   zoneout_upper: Sequence[torch.Tensor] = ()):
    """Two stacked layers of one direction over a CPU ``input``, the upper one reading the
    lower one's output: returns ((output, final states), (output_upper, final
    states_upper)), the same as ``layer(...)`` of the lower layer and then of the upper one,
    bit for bit. One call of the inference op when no gradient is needed; otherwise (or under
    a torch.func transform or forward-mode AD) the two ``layer`` calls."""
    state = [] if state is None else state
    state_upper = [] if state_upper is None else state_upper
    if _reference_only() or _needs_grad(input, state, weights, state_upper, weights_upper,
                                        zoneout, zoneout_upper):
        lower = layer(cell, input, state, weights, lengths, False, zoneout)
        return lower, layer(cell, lower[0], state_upper, weights_upper, lengths, False,
                            zoneout_upper)
    y, s, y_u, s_u = _STACK(cell, input, list(state), list(state_upper), list(weights),
                            list(weights_upper), lengths, list(zoneout) if zoneout else None,
                            list(zoneout_upper) if zoneout_upper else None)
    return (y, s), (y_u, s_u)
