"""GPU benchmark: rnnfast's CUDA kernels against cuDNN (nn.LSTM / nn.GRU / nn.RNN on CUDA).

    RNNFAST_CUDA_KERNELS=1 python bench/bench_gpu.py [--quick] [--out DIR] [--time-limit S]

Grid: cells LSTM, GRU, RNN (tanh); float32 and bfloat16; inference (no_grad forward) and
training (forward + backward); T = 100, I = H, B in {1, 8, 64, 256}, H in {256, 512, 1024}.
Each row times the two implementations interleaved, repetition by repetition, with CUDA
events after a warm-up, and reports medians and the ratio rnnfast / cuDNN (< 1: rnnfast is
faster). float32 runs with TF32 off on both sides (torch's matmul default; torch >= 2.9 lets
cuDNN's RNNs use TF32 by default, which this turns off for a like-for-like comparison).
Writes gpu_bench.json and gpu_bench.md to --out and prints the table last. rnnfast is imported
from the tree's python/ directory first (then PYTHONPATH, then an installed one).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness.machine import import_rnnfast, rnnfast_error  # noqa: E402
from harness.report import write_json  # noqa: E402
from harness.timing import rounds  # noqa: E402

CELLS = {"LSTM": {}, "GRU": {}, "RNN": {"nonlinearity": "tanh"}}


def make(rnnfast, cell, H, dtype):
    kw = CELLS[cell]
    ref = getattr(nn, cell)(H, H, **kw).to("cuda", dtype)
    fast = getattr(rnnfast, cell)(H, H, **kw).to("cuda", dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def step_fn(m, x, gy, training):
    if training:
        def run():
            y, _ = m(x)
            y.backward(gy)
    else:
        def run():
            with torch.no_grad():
                m(x)
    return run


def cuda_timer(f):
    """A call of f that returns its GPU time in milliseconds (CUDA events around it)."""
    def call():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        f()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    return call


def time_pair(fns, reps, warmup):
    """Median ms of each of fns, timed in rounds (every fn once per round, in the same order)."""
    for _ in range(warmup):
        for f in fns:
            f()
    torch.cuda.synchronize()
    times = rounds({i: cuda_timer(f) for i, f in enumerate(fns)}, reps, rotate=False)
    return [statistics.median(t) for t in times.values()]


def flops(cell, T, B, H, training):
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[cell]
    fwd = 2 * T * B * G * H * (H + H)
    return fwd * (3 if training else 1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few rows only")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    ap.add_argument("--time-limit", type=float, default=600.0,
                    help="stop adding rows after this many seconds")
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args(argv)
    rnnfast = import_rnnfast(prefer_tree=True)
    if rnnfast is None:
        print(f"bench_gpu: rnnfast cannot be imported: {rnnfast_error()}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("bench_gpu: no GPU here; nothing to measure")
        return 0
    if not rnnfast.ops.has_native_kernels("cuda"):
        print("bench_gpu: rnnfast's CUDA kernels are off; set RNNFAST_CUDA_KERNELS=1")
        return 1
    rnn_prec = getattr(getattr(torch.backends.cudnn, "rnn", None), "fp32_precision", None)
    if rnn_prec is not None:  # torch >= 2.9: cuDNN RNNs default to TF32 there
        torch.backends.cudnn.rnn.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    T = 100
    Bs, Hs = ([1, 64], [256, 1024]) if args.quick else ([1, 8, 64, 256], [256, 512, 1024])
    rows, t0 = [], time.time()
    stopped = None
    for dtype in (torch.float32, torch.bfloat16):
        for training in (False, True):
            for cell in ("LSTM", "GRU", "RNN"):
                for H in Hs:
                    for B in Bs:
                        if time.time() - t0 > args.time_limit:
                            stopped = stopped or f"time limit {args.time_limit:.0f} s reached"
                            continue
                        torch.manual_seed(0)
                        ref, fast = make(rnnfast, cell, H, dtype)
                        x = torch.randn(T, B, H, device="cuda", dtype=dtype,
                                        requires_grad=training)
                        gy = torch.randn(T, B, H, device="cuda", dtype=dtype)
                        reps = args.reps if B * H < 256 * 1024 else max(5, args.reps // 2)
                        t_ref, t_fast = time_pair(
                            [step_fn(ref, x, gy, training), step_fn(fast, x, gy, training)],
                            reps=reps, warmup=3)
                        row = dict(cell=cell, dtype=str(dtype).replace("torch.", ""),
                                   mode="training" if training else "inference", T=T, B=B, H=H,
                                   cudnn_ms=t_ref, rnnfast_ms=t_fast, ratio=t_fast / t_ref,
                                   rnnfast_tflops=flops(cell, T, B, H, training) / t_fast / 1e9)
                        rows.append(row)
                        print(f"{cell:4s} {row['dtype']:8s} {row['mode']:9s} B={B:4d} H={H:5d} "
                              f"cudnn {t_ref:8.3f} ms  rnnfast {t_fast:8.3f} ms  "
                              f"ratio {row['ratio']:.2f}", flush=True)
                        del ref, fast, x, gy
    props = torch.cuda.get_device_properties(0)
    meta = dict(device=props.name, sms=props.multi_processor_count, torch=torch.__version__,
                cudnn=torch.backends.cudnn.version(), date=time.strftime("%Y-%m-%d %H:%M:%S"),
                note="float32 with TF32 off on both sides; medians of CUDA-event times, "
                     "interleaved", stopped=stopped)
    os.makedirs(args.out, exist_ok=True)
    write_json(Path(args.out) / "gpu_bench.json", {"meta": meta, "rows": rows})
    lines = [f"GPU benchmark: {meta['device']} ({meta['sms']} SMs), torch {meta['torch']}, "
             f"cuDNN {meta['cudnn']}, T={T}, I=H; {meta['note']}"
             + (f"; {stopped}" if stopped else ""), "",
             "| cell | dtype | mode | B | H | cuDNN ms | rnnfast ms | ratio | rnnfast TFLOP/s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['dtype']} | {r['mode']} | {r['B']} | {r['H']} | "
                     f"{r['cudnn_ms']:.3f} | {r['rnnfast_ms']:.3f} | {r['ratio']:.2f} | "
                     f"{r['rnnfast_tflops']:.1f} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "gpu_bench.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
