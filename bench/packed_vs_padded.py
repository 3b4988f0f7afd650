"""PackedSequence against the padded batch of the same data, for rnnfast (and torch), timed
interleaved call by call in one process, medians: the CPU issue's target 'packed no slower
than padded'.

    python bench/packed_vs_padded.py [--config T,B,I,H] [--reps N] [--threads N]

Three calls per row: the module on a PackedSequence (built once; in training, packing is
inside the call since autograd must reach x), the same with packing (pack_padded_sequence,
enforce_sorted=False) and unpacking (pad_packed_sequence) around it, and the module on the
padded [T, B, I] tensor. Training calls backpropagate a sum of the outputs. Lengths are
harness.cases.mixed_lengths: mixed, unsorted, in [T/4, T]. rnnfast is imported from the tree's
python/ directory first (then PYTHONPATH, then an installed one).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness.cases import mixed_lengths  # noqa: E402
from harness.machine import import_rnnfast, rnnfast_error  # noqa: E402
from harness.timing import rounds, summarize, wall_timer  # noqa: E402

CELLS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


def calls(m, x, lengths, training):
    """(module call on a PackedSequence, the same with packing and unpacking around it,
    module call on the padded batch)."""
    T = x.shape[0]
    pk = pack_padded_sequence(x.detach(), lengths, enforce_sorted=False)
    if training:
        pk = pack_padded_sequence(x, lengths, enforce_sorted=False)

    def packed_module():
        out, _ = m(pk if not training else pack_padded_sequence(x, lengths, enforce_sorted=False))
        if training:
            out.data.sum().backward()

    def packed_end_to_end():
        out, _ = m(pack_padded_sequence(x, lengths, enforce_sorted=False))
        y, _ = pad_packed_sequence(out, total_length=T)
        if training:
            y.sum().backward()

    def padded():
        y, _ = m(x)
        if training:
            y.sum().backward()

    fs = (packed_module, packed_end_to_end, padded)
    if training:
        return fs

    def no_grad(f):
        def g():
            with torch.no_grad():
                f()
        return g

    return tuple(no_grad(f) for f in fs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="100,16,256,256")
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--torch", action="store_true", help="also time torch's modules")
    args = ap.parse_args(argv)
    rnnfast = import_rnnfast(prefer_tree=True)
    if rnnfast is None:
        print(f"rnnfast cannot be imported: {rnnfast_error()}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    T, B, I, H = (int(v) for v in args.config.split(","))
    lengths = torch.tensor(mixed_lengths(T, B, 0))
    print(f"T={T} B={B} I={I} H={H} threads={torch.get_num_threads()} "
          f"active fraction {float(lengths.sum()) / (T * B):.2f}")
    print(f"{'impl':8s} {'cell':5s} {'mode':10s} {'packed ms':>10s} {'+pack/pad':>10s} "
          f"{'padded ms':>10s} {'packed/padded':>14s} {'(+pack/pad)':>12s}")
    impls = ["rnnfast"] + (["torch"] if args.torch else [])
    for cell, cls_name in CELLS.items():
        for training in (False, True):
            for impl in impls:
                torch.manual_seed(0)
                m = getattr(rnnfast if impl == "rnnfast" else nn, cls_name)(I, H)
                x = torch.randn(T, B, I, requires_grad=training)
                fs = calls(m, x, lengths, training)
                for _ in range(3):
                    for f in fs:
                        f()
                # interleaved, call by call, the order rotated each round
                times = rounds({i: wall_timer(f) for i, f in enumerate(fs)}, args.reps)
                mp, me, md = (summarize(t)["median_ms"] for t in times.values())
                print(f"{impl:8s} {cell:5s} {'training' if training else 'inference':10s} "
                      f"{mp:10.3f} {me:10.3f} {md:10.3f} {mp / md:14.2f} {me / md:12.2f}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
