"""What the timing loop and the checks call: a Runner per implementation, fed Inputs prepared
once per row."""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import torch
import torch.nn as nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence


class Unsupported(Exception):
    """Raised by a factory or runner for what it cannot run (e.g. an inference-only runtime
    asked for training); the table shows n/a."""


@dataclasses.dataclass
class Inputs:
    x: torch.Tensor                          # [T, B, I] padded input (leaf, requires_grad)
    lengths: Optional[torch.Tensor] = None   # per-sequence lengths of a packed row

    def arg(self):
        if self.lengths is None:
            return self.x
        # Packing is part of the work a packed-sequence user pays for each batch; it is cheap and
        # identical for every implementation.
        return pack_padded_sequence(self.x, self.lengths, enforce_sorted=False)


class Runner:
    """One implementation, built for one row."""

    def infer(self, inputs: Inputs):
        """Forward without autograd. Returns (out [T,B,D*H] padded, h_n, c_n or None)."""
        raise NotImplementedError

    def train(self, inputs: Inputs) -> None:
        """Grads set to None, forward, (out.sum() + h_n.sum()).backward()."""
        raise Unsupported("training")

    def grads(self) -> Dict[str, torch.Tensor]:
        """Gradients left by the last train() call, keyed by torch parameter name (+ 'input')."""
        return {}


class ModuleRunner(Runner):
    """Runs any module with torch.nn.RNNBase's forward signature."""

    def __init__(self, module: nn.Module):
        self.m = module
        self._x: Optional[torch.Tensor] = None

    def _forward(self, inputs: Inputs):
        out, h = self.m(inputs.arg())
        c = None
        if isinstance(h, tuple):
            h, c = h
        if isinstance(out, PackedSequence):
            out, _ = pad_packed_sequence(out, total_length=inputs.x.shape[0])
        return out, h, c

    def infer(self, inputs: Inputs):
        with torch.no_grad():
            return self._forward(inputs)

    def train(self, inputs: Inputs) -> None:
        self.m.zero_grad(set_to_none=True)
        inputs.x.grad = None
        out, h = self.m(inputs.arg())
        if isinstance(h, tuple):
            h = h[0]
        if isinstance(out, PackedSequence):
            out = out.data
        (out.sum() + h.sum()).backward()
        self._x = inputs.x

    def grads(self) -> Dict[str, torch.Tensor]:
        g = {n: p.grad for n, p in self.m.named_parameters() if p.grad is not None}
        if self._x is not None and self._x.grad is not None:
            g["input"] = self._x.grad
        return g


def same_module_kwargs(ref: nn.Module) -> dict:
    """The constructor keyword arguments that rebuild torch RNN module `ref` (with its sizes)."""
    kw = dict(num_layers=ref.num_layers, bias=ref.bias, batch_first=ref.batch_first,
              dropout=ref.dropout, bidirectional=ref.bidirectional)
    if isinstance(ref, nn.LSTM) and ref.proj_size:
        kw["proj_size"] = ref.proj_size
    if type(ref) is nn.RNN:
        kw["nonlinearity"] = ref.nonlinearity
    return kw
