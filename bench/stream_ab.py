"""Non-temporal workspace stores (LayerPlan::stream_workspace, csrc/core/cpu/layer_impl.h) on
and off: one training step (forward, then backward of out.sum()) of a single float32 layer, with
the plan's choice against RNNFAST_STREAM_WS=0, in one process, interleaved round by round.

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

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import rnnfast  # noqa: E402

ROWS = ["lstm,1000,4,64,256", "lstm,64,32,64,256", "gru,64,32,64,256", "lstm,100,16,256,256",
        "lstm,100,32,256,256", "gru,100,32,256,256", "lstm,50,64,512,512",
        "lstm,100,8,256,1024", "rnn_tanh,100,64,256,1024"]
MODULES = {"lstm": rnnfast.LSTM, "gru": rnnfast.GRU, "rnn_tanh": rnnfast.RNN}
ENV = "RNNFAST_STREAM_WS"


def parse_row(text):
    parts = text.split(",")
    if len(parts) != 5 or parts[0] not in MODULES:
        raise argparse.ArgumentTypeError(
            f"--rows: expected cell,T,B,I,H with cell in {sorted(MODULES)}, got {text!r}")
    try:
        return (parts[0],) + tuple(int(p) for p in parts[1:])
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rows: T,B,I,H must be integers, got {text!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--calls", type=int, default=3, help="training steps per timed block")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=parse_row, nargs="+", default=[parse_row(r) for r in ROWS])
    args = ap.parse_args()
    if ENV in os.environ:
        print(f"stream_ab.py: unset {ENV} first (it would force one side)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# {rnnfast._C.simd()}, {args.threads} threads, {args.rounds} rounds of "
          f"{args.calls} steps, medians", flush=True)
    for cell, T, B, I, H in args.rows:
        plan = rnnfast._C.plan(cell, False, T, B, I, H, threads=args.threads, training=True)
        label = f"{cell} {T},{B},{I},{H}"
        if "stream_workspace=1" not in plan:
            print(f"{label}: not streamed by the plan on this path", flush=True)
            continue
        m = MODULES[cell](I, H)
        x = torch.randn(T, B, I, requires_grad=True)

        def step():
            out, _ = m(x)
            out.sum().backward()

        times = {"streamed": [], "plain": []}
        try:
            for _ in range(args.rounds):
                for side in times:
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
