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

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F


def _step(cell, x, h, c, w_ih, w_hh, b_ih, b_hh, w_hr):
    gi = F.linear(x, w_ih, b_ih)
    gh = F.linear(h, w_hh, b_hh)
    if cell == "lstm":
        i, f, g, o = (gi + gh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        if w_hr is not None:
            h = F.linear(h, w_hr)
        return h, c
    if cell == "gru":
        xr, xz, xn = gi.chunk(3, dim=-1)
        hr, hz, hn = gh.chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h, None
    pre = gi + gh
    return (torch.relu(pre) if cell == "rnn_relu" else torch.tanh(pre)), None


def _padded_layer(cell, input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr,
                  lengths, reverse):
    T, B, _ = input.shape
    H = weight_hh.shape[1] if weight_hr is None else weight_hr.shape[1]
    S = weight_hh.shape[1]
    h = hx if hx is not None else input.new_zeros(B, S)
    c = None
    if cell == "lstm":
        c = cx if cx is not None else input.new_zeros(B, H)
    outs = [None] * T
    steps = range(T - 1, -1, -1) if reverse else range(T)
    active_all = None
    if lengths is not None:
        active_all = lengths.to(input.device).unsqueeze(0) > torch.arange(
            T, device=input.device).unsqueeze(1)  # [T, B]
    for t in steps:
        h_new, c_new = _step(cell, input[t], h, c, weight_ih, weight_hh, bias_ih, bias_hh,
                             weight_hr)
        if active_all is not None:
            active = active_all[t].unsqueeze(1)
            h = torch.where(active, h_new, h)
            if c is not None:
                c = torch.where(active, c_new, c)
            outs[t] = torch.where(active, h_new, torch.zeros_like(h_new))
        else:
            h, c = h_new, c_new
            outs[t] = h_new
    out = torch.stack(outs, 0) if T > 0 else input.new_zeros(0, B, S)
    return out, h, c


def layer(cell: str, input: torch.Tensor, hx: Optional[torch.Tensor], cx: Optional[torch.Tensor],
          weight_ih: torch.Tensor, weight_hh: torch.Tensor, bias_ih: Optional[torch.Tensor],
          bias_hh: Optional[torch.Tensor], weight_hr: Optional[torch.Tensor] = None,
          lengths: Optional[torch.Tensor] = None, reverse: bool = False
          ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """One layer, one direction: (output, h_T, c_T or None), as :func:`rnnfast.ops.layer`.

    ``input`` is [T, B, I], or the packed rows [N, I] of a PackedSequence with their
    non-increasing ``lengths``. With ``lengths``, steps past a sequence's end leave its state
    unchanged and give zero output rows; the reverse direction starts at each sequence's end.
    """
    if input.dim() != 2:
        return _padded_layer(cell, input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh,
                             weight_hr, lengths, reverse)
    if lengths is None:
        raise RuntimeError("rnnfast: a packed 2-D input needs lengths (the sequence lengths, "
                           "non-increasing)")
    # packed rows: (t, b) active iff lengths[b] > t; with non-increasing lengths the active
    # pairs in row-major (t, b) order are exactly PackedSequence.data's order
    lengths = lengths.to(device="cpu", dtype=torch.int64)
    B = lengths.shape[0]
    T = int(lengths.max()) if B > 0 else 0
    active = lengths.unsqueeze(0) > torch.arange(T).unsqueeze(1)  # [T, B]
    tt, bb = (i.to(input.device) for i in active.nonzero(as_tuple=True))
    if tt.numel() != input.shape[0]:
        raise RuntimeError(f"rnnfast: a packed input of {input.shape[0]} rows needs lengths "
                           f"summing to that, got sum(lengths) = {tt.numel()}")
    padded = input.new_zeros(T, B, input.shape[1]).index_put((tt, bb), input)
    out, h, c = _padded_layer(cell, padded, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh,
                              weight_hr, lengths, reverse)
    return out[tt, bb], h, c


def layer_backward(cell: str, reverse: bool, grad_output: Optional[torch.Tensor],
                   grad_hy: Optional[torch.Tensor], grad_cy: Optional[torch.Tensor],
                   input: torch.Tensor, hx: Optional[torch.Tensor], cx: Optional[torch.Tensor],
                   weight_ih: torch.Tensor, weight_hh: torch.Tensor,
                   bias_ih: Optional[torch.Tensor], bias_hh: Optional[torch.Tensor],
                   weight_hr: Optional[torch.Tensor], lengths: Optional[torch.Tensor]
                   ) -> List[Optional[torch.Tensor]]:
    """Gradients of one layer op, themselves differentiable (for ``create_graph=True``).

    Called by the fused ops' autograd (csrc/torch/autograd.cpp) when autograd records the
    backward pass: the forward is recomputed with this module's loop and differentiated with
    ``create_graph=True``, so the gradients depend differentiably on the forward's inputs
    and on the incoming gradients. Returns the gradients of (input, hx, cx, weight_ih,
    weight_hh, bias_ih, bias_hh, weight_hr): None for a tensor that needs none.
    """
    inputs = [input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr]
    wanted = [i for i, t in enumerate(inputs) if t is not None and t.requires_grad]
    result: List[Optional[torch.Tensor]] = [None] * len(inputs)
    if not wanted:
        return result
    with torch.enable_grad():
        out, hy, cy = layer(cell, input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh,
                            weight_hr, lengths, reverse)
        pairs = [(o, g) for o, g in ((out, grad_output), (hy, grad_hy), (cy, grad_cy))
                 if o is not None and g is not None]
        if pairs:
            grads = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wanted],
                                        [g for _, g in pairs], create_graph=True,
                                        allow_unused=True)
        else:
            grads = [None] * len(wanted)
    for i, g in zip(wanted, grads):
        result[i] = g if g is not None else torch.zeros_like(inputs[i])
    return result
