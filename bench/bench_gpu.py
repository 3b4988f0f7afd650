"""GPU benchmark: rnnfast's CUDA kernels against cuDNN (nn.LSTM / nn.GRU / nn.RNN on CUDA).

    RNNFAST_CUDA_KERNELS=1 python bench/bench_gpu.py [--quick] [--out DIR] [--time-limit S]

Grid: cells LSTM, GRU, RNN (tanh); float32 and bfloat16; inference (no_grad forward) and
training (forward + backward); T = 100, I = H, B in {1, 8, 64, 256}, H in {256, 512, 1024}.
Each row times the two implementations interleaved, repetition by repetition, with CUDA
events after a warm-up, and reports medians and the ratio rnnfast / cuDNN (< 1: rnnfast is
faster). float32 runs with TF32 off on both sides (torch's matmul default; torch >= 2.9 lets
cuDNN's RNNs use TF32 by default, which this turns off for a like-for-like comparison). Writes gpu_bench.json and gpu_bench.md to --out and prints the
table last.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import rnnfast  # noqa: E402

CELLS = {"LSTM": (nn.LSTM, rnnfast.LSTM, {}), "GRU": (nn.GRU, rnnfast.GRU, {}),
         "RNN": (nn.RNN, rnnfast.RNN, {"nonlinearity": "tanh"})}


def make(cell, H, dtype):
    ref_cls, fast_cls, kw = CELLS[cell]
    ref = ref_cls(H, H, **kw).to("cuda", dtype)
    fast = fast_cls(H, H, **kw).to("cuda", dtype)
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


def time_pair(fns, reps, warmup):
    for _ in range(warmup):
        for f in fns:
            f()
    torch.cuda.synchronize()
    times = [[] for _ in fns]
    for _ in range(reps):
        for i, f in enumerate(fns):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            f()
            end.record()
            end.synchronize()
            times[i].append(start.elapsed_time(end))
    return [statistics.median(t) for t in times]


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
                        ref, fast = make(cell, H, dtype)
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
    with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
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
