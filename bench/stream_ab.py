"""Non-temporal workspace stores (LayerPlan::stream_workspace, csrc/core/cpu/layer_impl.h) on
and off: one training step (forward, then backward of out.sum()) of a single float32 layer, with
the plan's choice against RNNFAST_STREAM_WS=0, in one process, interleaved (the side that goes
first alternates round by round), medians.

    python bench/stream_ab.py [--rounds 25] [--calls 3] [--threads 2] [--rows lstm,64,32,64,256 ...]

Each row prints both medians (ms per step) and plain / streamed. Rows whose plan does not stream
(on this SIMD path, at that size) are listed as such and not timed: both sides would be the
same code. Results: bench/results/stream-2026-12-02.md.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from harness.machine import import_rnnfast, rnnfast_info  # noqa: E402

ROWS = ["lstm,1000,4,64,256", "lstm,64,32,64,256", "gru,64,32,64,256", "lstm,100,16,256,256",
        "lstm,100,32,256,256", "gru,100,32,256,256", "lstm,50,64,512,512",
        "lstm,100,8,256,1024", "rnn_tanh,100,64,256,1024"]
CELLS = ("lstm", "gru", "rnn_tanh")
ENV = "RNNFAST_STREAM_WS"


def positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parse_row(text):
    parts = text.split(",")
    if len(parts) != 5 or parts[0] not in CELLS:
        raise argparse.ArgumentTypeError(
            f"expected cell,T,B,I,H with cell in {list(CELLS)}, got {text!r}")
    try:
        sizes = tuple(positive(p) for p in parts[1:])
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"T,B,I,H must be positive integers, got {text!r}")
    return (parts[0],) + sizes


def streams(rnnfast, cell, T, B, I, H, threads):
    plan = rnnfast._C.plan(cell, False, T, B, I, H, threads=threads, training=True)
    return "stream_workspace=1" in plan


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=positive, default=25)
    ap.add_argument("--calls", type=positive, default=3, help="training steps per timed block")
    ap.add_argument("--threads", type=positive, default=2)
    ap.add_argument("--rows", type=parse_row, nargs="+", default=[parse_row(r) for r in ROWS])
    args = ap.parse_args(argv)
    if ENV in os.environ:
        print(f"stream_ab.py: unset {ENV} first (it would force one side)", file=sys.stderr)
        return 2
    rnnfast = import_rnnfast()
    if rnnfast is None:
        print(f"rnnfast cannot be imported: {rnnfast_info().get('error')}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    modules = {"lstm": rnnfast.LSTM, "gru": rnnfast.GRU, "rnn_tanh": rnnfast.RNN}
    print(f"# {rnnfast._C.simd()}, {args.threads} threads, {args.rounds} rounds of "
          f"{args.calls} steps, medians", flush=True)
    for cell, T, B, I, H in args.rows:
        label = f"{cell} {T},{B},{I},{H}"
        if not streams(rnnfast, cell, T, B, I, H, args.threads):
            print(f"{label}: not streamed by the plan on this path", flush=True)
            continue
        try:  # the override must turn it off, or both sides would time the same code
            os.environ[ENV] = "0"
            overridden = streams(rnnfast, cell, T, B, I, H, args.threads)
        finally:
            os.environ.pop(ENV, None)
        if overridden:
            print(f"stream_ab.py: {ENV}=0 did not turn streaming off ({label})", file=sys.stderr)
            return 3
        m = modules[cell](I, H)
        x = torch.randn(T, B, I, requires_grad=True)

        def step():
            out, _ = m(x)
            out.sum().backward()

        times = {"streamed": [], "plain": []}
        try:
            for r in range(args.rounds):
                for side in (("streamed", "plain") if r % 2 == 0 else ("plain", "streamed")):
                    if side == "plain":
                        os.environ[ENV] = "0"
                    step()  # (the first call after a switch is not timed)
                    t0 = time.perf_counter()
                    for _ in range(args.calls):
                        step()
                    times[side].append((time.perf_counter() - t0) / args.calls)
                    os.environ.pop(ENV, None)
        finally:
            os.environ.pop(ENV, None)
        s, p = statistics.median(times["streamed"]), statistics.median(times["plain"])
        print(f"{label}: streamed {s * 1e3:.2f} ms  plain {p * 1e3:.2f} ms  "
              f"plain/streamed {p / s:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
