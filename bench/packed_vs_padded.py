"""PackedSequence against the padded batch of the same data, for rnnfast (and torch), timed
interleaved call by call in one process, medians: the CPU issue's target 'packed no slower
than padded'.

    python bench/packed_vs_padded.py [--config T,B,I,H] [--reps N] [--threads N]

The packed call includes packing the padded batch (pack_padded_sequence with
enforce_sorted=False, as a user does per batch) and padding the output back; the padded call
runs the module on the [T, B, I] tensor directly. Lengths are bench_cpu.mixed_lengths: mixed,
unsorted, in [T/4, T].
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import rnnfast  # noqa: E402
from bench_cpu import mixed_lengths  # noqa: E402

CLASSES = {"lstm": (rnnfast.LSTM, nn.LSTM), "gru": (rnnfast.GRU, nn.GRU),
           "rnn": (rnnfast.RNN, nn.RNN)}


def calls(m, x, lengths, training):
    T = x.shape[0]

    def packed():
        out, _ = m(pack_padded_sequence(x, lengths, enforce_sorted=False))
        y, _ = pad_packed_sequence(out, total_length=T)
        if training:
            y.sum().backward()

    def padded():
        y, _ = m(x)
        if training:
            y.sum().backward()

    if training:
        return packed, padded

    def no_grad(f):
        def g():
            with torch.no_grad():
                f()
        return g

    return no_grad(packed), no_grad(padded)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="100,16,256,256")
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--torch", action="store_true", help="also time torch's modules")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    T, B, I, H = (int(v) for v in args.config.split(","))
    lengths = torch.tensor(mixed_lengths(T, B, 0))
    print(f"T={T} B={B} I={I} H={H} threads={torch.get_num_threads()} "
          f"active fraction {float(lengths.sum()) / (T * B):.2f}")
    print(f"{'impl':8s} {'cell':5s} {'mode':10s} {'packed ms':>10s} {'padded ms':>10s} "
          f"{'packed/padded':>14s}")
    impls = ["rnnfast"] + (["torch"] if args.torch else [])
    for cell, (fast_cls, ref_cls) in CLASSES.items():
        for training in (False, True):
            for impl in impls:
                torch.manual_seed(0)
                m = (fast_cls if impl == "rnnfast" else ref_cls)(I, H)
                x = torch.randn(T, B, I, requires_grad=training)
                f_packed, f_padded = calls(m, x, lengths, training)
                for _ in range(3):
                    f_packed()
                    f_padded()
                tp, td = [], []
                for r in range(args.reps):
                    for f, acc in ((f_packed, tp), (f_padded, td))[::1 if r % 2 else -1]:
                        t0 = time.perf_counter()
                        f()
                        acc.append(time.perf_counter() - t0)
                mp, md = statistics.median(tp) * 1e3, statistics.median(td) * 1e3
                print(f"{impl:8s} {cell:5s} {'training' if training else 'inference':10s} "
                      f"{mp:10.3f} {md:10.3f} {mp / md:14.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
