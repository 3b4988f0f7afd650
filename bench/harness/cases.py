"""bench_cpu.py's rows: the shapes (Case), the default and quick grids, --config parsing, and
each row's reference module (the weights every implementation gets) and input."""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from .runners import Inputs

CELLS = ("lstm", "gru", "rnn")
MODES = ("inference", "training")
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
TORCH_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


@dataclasses.dataclass(frozen=True)
class Case:
    """One shape to benchmark. `variant` is 'plain', 'packed' or 'padded'.

    packed: a PackedSequence built from `lengths` (mixed, unsorted, enforce_sorted=False).
    padded: the same batch as the packed case, run as a plain padded [T, B, I] tensor, i.e. what
            you pay without packing (full T for every sequence).
    """

    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    variant: str = "plain"
    lengths: Optional[Tuple[int, ...]] = None

    @property
    def dirs(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def tag(self) -> str:
        parts = []
        if self.layers > 1:
            parts.append(f"{self.layers}L")
        if self.bidirectional:
            parts.append("bi")
        if self.variant != "plain":
            parts.append(self.variant)
        return "+".join(parts) or "-"

    def token_steps(self) -> int:
        """Sum over the batch of the steps actually computed (T*B unless packed)."""
        if self.variant == "packed":
            return int(sum(self.lengths))
        return self.T * self.B

    def forward_flops(self, cell: str) -> float:
        """2 * steps * G*H * (I_l + H) per layer and direction (GEMM flops only)."""
        g = GATES[cell]
        total = 0.0
        for layer in range(self.layers):
            i_l = self.I if layer == 0 else self.H * self.dirs
            total += self.dirs * 2.0 * self.token_steps() * g * self.H * (i_l + self.H)
        return total

    def flops(self, cell: str, mode: str) -> float:
        f = self.forward_flops(cell)
        return f if mode == "inference" else 3.0 * f   # backward ~ 2x forward


def mixed_lengths(T: int, B: int, seed: int) -> Tuple[int, ...]:
    """Mixed, unsorted lengths in [T/4, T], always containing T (so padding to T is exact)."""
    g = torch.Generator().manual_seed(seed + 12345)
    lo = max(1, T // 4)
    lens = torch.randint(lo, T + 1, (B,), generator=g).tolist()
    lens[int(torch.randint(0, B, (1,), generator=g))] = T
    return tuple(int(x) for x in lens)


def packed_pair(T: int, B: int, I: int, H: int, seed: int, **kw) -> List[Case]:
    lens = mixed_lengths(T, B, seed)
    return [Case(T, B, I, H, variant="packed", lengths=lens, **kw),
            Case(T, B, I, H, variant="padded", lengths=lens, **kw)]


def default_grid(seed: int) -> List[Case]:
    grid = [Case(*s) for s in [(200, 1, 128, 128), (50, 16, 64, 64), (100, 32, 256, 256),
                               (1000, 4, 64, 256), (100, 64, 512, 512), (100, 8, 256, 1024)]]
    # 2-layer models: the demo's shape (T=64, B=32, I=64, H=256) and its batch at 1 and 8
    grid += [Case(64, b, 64, 256, layers=2) for b in (1, 8, 32)]
    grid.append(Case(100, 16, 256, 256, layers=2, bidirectional=True))
    grid += packed_pair(100, 16, 256, 256, seed)
    return grid


def quick_grid(seed: int) -> List[Case]:
    return ([Case(32, 1, 32, 32), Case(16, 4, 32, 64, layers=2, bidirectional=True)]
            + packed_pair(24, 6, 32, 32, seed))


_CONFIG_RE = re.compile(r"^(\d+),(\d+),(\d+),(\d+)(?::(.*))?$")


def parse_config(text: str, seed: int) -> List[Case]:
    """'T,B,I,H[:opts]' with opts a '+'-list of: <n>L (layers), bi, packed."""
    m = _CONFIG_RE.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"bad --config {text!r}; want T,B,I,H[:2L+bi+packed]")
    T, B, I, H = (int(m.group(k)) for k in range(1, 5))
    layers, bidir, packed = 1, False, False
    for opt in filter(None, (m.group(5) or "").split("+")):
        if opt == "bi":
            bidir = True
        elif opt == "packed":
            packed = True
        elif re.fullmatch(r"\d+L", opt):
            layers = int(opt[:-1])
        else:
            raise argparse.ArgumentTypeError(f"unknown option {opt!r} in --config {text!r}")
    if packed:
        return packed_pair(T, B, I, H, seed, layers=layers, bidirectional=bidir)
    return [Case(T, B, I, H, layers=layers, bidirectional=bidir)]


def make_reference(cell: str, case: Case, seed: int,
                   dtype: torch.dtype = torch.float32) -> nn.Module:
    """The torch module whose weights every implementation of the row gets (in `dtype`; the
    float64 weights are the float32 draw, converted, so both grids time the same model)."""
    torch.manual_seed(seed)
    m = TORCH_CLASSES[cell](case.I, case.H, num_layers=case.layers,
                            bidirectional=case.bidirectional)
    return m.float().to(dtype)


def make_inputs(case: Case, seed: int, dtype: torch.dtype = torch.float32) -> Inputs:
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(case.T, case.B, case.I, generator=g).to(dtype)
    lengths = None
    if case.lengths is not None:
        lengths = torch.tensor(case.lengths, dtype=torch.int64)
        mask = torch.arange(case.T)[:, None] < lengths[None, :]
        x = x * mask[..., None]      # zero padding, so 'padded' runs the same data
    if case.variant == "padded":
        lengths = None
    x.requires_grad_(True)
    return Inputs(x=x, lengths=lengths)
