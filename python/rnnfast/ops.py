"""Typed wrappers over torch.ops.rnnfast.*: fake (meta) kernels, autocast; autograd is in C++.

Every recurrent cell has one forward op over a whole sequence for one layer and
one direction, and its backward op, with the same schema for every cell:

    <cell>_layer(input[T,B,I], hx[B,S]?, cx[B,H]?, weight_ih[G*H,I], weight_hh[G*H,S],
                 bias_ih[G*H]?, bias_hh[G*H]?, weight_hr[P,H]?, lengths[B] int64?,
                 reverse, training) -> (output[T,B,S], hy[B,S], cy[B,H] or [0], workspace)

On CPU the input may also be packed, [N, I] with N = sum(lengths): the rows of the
active (t, b) in PackedSequence.data order (time-major), with non-increasing lengths; the
output (and workspace) are then packed the same way, [N, S].

where <cell> is lstm, gru, rnn_tanh or rnn_relu, S = P if weight_hr is given
(LSTM projection) else H, and G is 4, 3 or 1. ``training=True`` saves the
activations backward needs in ``workspace``; with ``training=False`` it is empty.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
import torch.autograd.forward_ad as _fwad

from . import _C  # noqa: F401  (loads the library that defines the ops)
from . import _reference

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

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def workspace_cols(cell: str, hidden: int, proj: int) -> int:
    """Columns of the workspace a forward pass saves per (t, b); mirrors csrc/core."""
    state = proj if proj > 0 else hidden
    if cell == "lstm":
        return (7 if proj > 0 else 6) * hidden + state
    if cell == "gru":
        return 5 * hidden
    return 2 * hidden


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


def _op(cell: str):
    return getattr(torch.ops.rnnfast, f"{cell}_layer")


def _register(cell: str) -> None:
    name = f"rnnfast::{cell}_layer"

    @torch.library.register_fake(name)
    def _fake(input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths,
              reverse, training):
        rows, B = _rows(input, lengths)
        H = weight_ih.shape[0] // GATES[cell]
        P = weight_hr.shape[0] if weight_hr is not None else 0
        S = P if P > 0 else H
        out = input.new_empty(rows + (S,))
        hy = input.new_empty((B, S))
        cy = input.new_empty((B, H)) if cell == "lstm" else input.new_empty((0,))
        ws_dtype = workspace_dtype(input)
        ws = (input.new_empty(rows + (workspace_cols(cell, H, P),), dtype=ws_dtype) if training
              else input.new_empty((0,), dtype=ws_dtype))
        return out, hy, cy, ws

    @torch.library.register_fake(name + "_backward")
    def _fake_backward(grad_output, grad_hy, grad_cy, input, weight_ih, weight_hh, weight_hr,
                       lengths, workspace, reverse):
        _, B = _rows(input, lengths)
        H = weight_ih.shape[0] // GATES[cell]
        P = weight_hr.shape[0] if weight_hr is not None else 0
        S = P if P > 0 else H
        return (
            input.new_empty(input.shape),
            input.new_empty((B, S)),
            input.new_empty((B, H)) if cell == "lstm" else input.new_empty((0,)),
            input.new_empty(weight_ih.shape),
            input.new_empty(weight_hh.shape),
            input.new_empty((weight_ih.shape[0],)),
            input.new_empty((weight_ih.shape[0],)),
            input.new_empty(weight_hr.shape) if P > 0 else input.new_empty((0,)),
        )

    # Autograd: registered in C++ (csrc/torch/autograd.cpp) under the Autograd key.


for _cell in CELLS:
    _register(_cell)
    # Under autocast the fused ops run in float32 (they have no bf16/fp16 kernels): bf16/fp16
    # inputs and states are cast up; float64 is left alone (autocast's own fp32 policy).
    torch.library.register_autocast(f"rnnfast::{_cell}_layer", "cpu", torch.float32)


def layer(cell: str, input: torch.Tensor, hx: Optional[torch.Tensor], cx: Optional[torch.Tensor],
          weight_ih: torch.Tensor, weight_hh: torch.Tensor, bias_ih: Optional[torch.Tensor],
          bias_hh: Optional[torch.Tensor], weight_hr: Optional[torch.Tensor] = None,
          lengths: Optional[torch.Tensor] = None, reverse: bool = False
          ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """One layer, one direction over ``input`` [T, B, I]: returns (output, h_T, c_T or None).

    Saves activations for backward only when autograd will need them. Under CUDA autocast
    the CUDA kernels run in the autocast dtype (float16 or bfloat16), as cuDNN's do.

    Under a torch.func transform (grad, vjp, jacrev, jacfwd, hessian, vmap) or forward-mode
    AD, the layer runs as the plain-PyTorch loop of :mod:`rnnfast._reference` instead: the
    fused ops' autograd is a C++ ``torch::autograd::Function`` (kept in C++ for speed), which
    functorch refuses and which has no forward-mode derivative. Same results, slower.
    """
    if _fwad._current_level >= 0 or (not torch.compiler.is_compiling()
                                     and _peek_functorch() is not None):
        return _reference.layer(cell, input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh,
                                weight_hr, lengths, reverse)
    if input.is_cuda and torch.is_autocast_enabled("cuda"):
        dt = torch.get_autocast_dtype("cuda")

        def cast(t):
            return (t.to(dt) if t is not None and t.is_floating_point()
                    and t.dtype != torch.float64 else t)

        input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr = (
            cast(t) for t in (input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr))
    training = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad
        for t in (input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr))
    out, hy, cy, _ = _op(cell)(input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr,
                               lengths, reverse, training)
    return out, hy, (cy if cell == "lstm" else None)
