"""Plain-PyTorch cell loops with the same contract as :func:`rnnfast.ops.layer`.

Used on devices that have no native rnnfast kernels yet (everything but CPU in
this build). Slower, but correct and differentiable by autograd.
"""
from __future__ import annotations

from typing import Optional, Tuple

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


def layer(cell: str, input: torch.Tensor, hx: Optional[torch.Tensor], cx: Optional[torch.Tensor],
          weight_ih: torch.Tensor, weight_hh: torch.Tensor, bias_ih: Optional[torch.Tensor],
          bias_hh: Optional[torch.Tensor], weight_hr: Optional[torch.Tensor] = None,
          lengths: Optional[torch.Tensor] = None, reverse: bool = False
          ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    T, B, _ = input.shape
    H = weight_hh.shape[1] if weight_hr is None else weight_hr.shape[1]
    S = weight_hh.shape[1]
    h = hx if hx is not None else input.new_zeros(B, S)
    c = None
    if cell == "lstm":
        c = cx if cx is not None else input.new_zeros(B, H)
    outs = [None] * T
    steps = range(T - 1, -1, -1) if reverse else range(T)
    for t in steps:
        h_new, c_new = _step(cell, input[t], h, c, weight_ih, weight_hh, bias_ih, bias_hh,
                             weight_hr)
        if lengths is not None:
            active = (lengths.to(input.device) > t).unsqueeze(1)
            h = torch.where(active, h_new, h)
            if c is not None:
                c = torch.where(active, c_new, c)
            outs[t] = torch.where(active, h_new, torch.zeros_like(h_new))
        else:
            h, c = h_new, c_new
            outs[t] = h_new
    return torch.stack(outs, 0), h, c
