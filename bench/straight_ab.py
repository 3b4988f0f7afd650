"""The CPU shortcut of ops.layer (ops._straight_to_cpu) on and off, in one process: a cell
step per call (LSTMCell / GRUCell under no_grad, as a decoding loop runs it), timed in blocks of
calls with the shortcut taken and with it refused (every call through the full dispatch), the
side that goes first alternating round by round, medians; torch's cell in the same rounds.

    python bench/straight_ab.py [--rounds 31] [--block-ms 5] [--rows lstm,1,32 gru,16,128 ...]

Prints, per row (cell, B, H = I, float32 and float64): the medians in us per call,
straight / full, and each against torch. Results: bench/results/cpu-2026-12-02-zen5.md.
"""
import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from harness.machine import import_rnnfast, rnnfast_error  # noqa: E402

ROWS = ["lstm,1,32", "lstm,1,128", "lstm,16,32", "lstm,16,128", "gru,1,32", "gru,1,128",
        "gru,16,32", "gru,16,128"]
CLASSES = {"lstm": "LSTMCell", "gru": "GRUCell"}


def _row(text):
    parts = text.split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected cell,B,H, got {text!r}")
    cell, b, h = parts
    if cell not in CLASSES:
        raise argparse.ArgumentTypeError(f"cell must be one of {sorted(CLASSES)}, got {cell!r}")
    try:
        B, H = int(b), int(h)
    except ValueError:
        B = H = 0
    if B < 1 or H < 1:
        raise argparse.ArgumentTypeError(f"B and H must be positive integers, got {text!r}")
    return cell, B, H


def _calls_per_block(fn, block_ms):
    fn()
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < 0.02:
        fn()
        n += 1
    per_call = (time.perf_counter() - t0) / n
    return max(1, int(block_ms * 1e-3 / per_call))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", type=_row, default=[_row(r) for r in ROWS],
                    help="cell,B,H each (cell: lstm or gru; the input size is H)")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--block-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.block_ms <= 0:
        ap.error(f"--rounds must be >= 1 and --block-ms > 0, got {args.rounds} and "
                 f"{args.block_ms}")
    rnnfast = import_rnnfast()
    if rnnfast is None:
        raise SystemExit(f"straight_ab.py: rnnfast does not import: {rnnfast_error()}")
    from rnnfast import ops
    torch.set_num_threads(args.threads)
    real = ops._straight_to_cpu
    print(f"# {rnnfast._C.simd()}, {args.threads} threads, {args.rounds} rounds, "
          f"blocks of {args.block_ms} ms, medians in us per call, gc off while timing")
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for cell, B, H in args.rows:
            torch.manual_seed(0)
            ours = getattr(rnnfast, CLASSES[cell])(H, H).to(dtype)
            ref = getattr(torch.nn, CLASSES[cell])(H, H).to(dtype)
            ref.load_state_dict(ours.state_dict())
            x = torch.randn(B, H, dtype=dtype)
            h = torch.randn(B, H, dtype=dtype)
            state = (h, torch.randn(B, H, dtype=dtype)) if cell == "lstm" else h
            taken = []

            def spy(*a):
                taken.append(real(*a))
                return taken[-1]

            ops._straight_to_cpu = spy
            with torch.no_grad():
                ours(x, state)
            ops._straight_to_cpu = real
            if taken != [True]:
                raise SystemExit(f"{cell},{B},{H} {dtype_name}: the shortcut is not taken "
                                 f"here ({taken}); nothing to compare")

            def run_ours():
                ours(x, state)

            sides = {"straight": (run_ours, real), "full": (run_ours, lambda *a: False),
                     "torch": (lambda: ref(x, state), real)}
            n = {k: _calls_per_block(f, args.block_ms) for k, (f, _) in sides.items()}
            times = {k: [] for k in sides}
            order = list(sides)
            with torch.no_grad():
                gc.disable()
                try:
                    for r in range(args.rounds):
                        for k in (order if r % 2 == 0 else order[::-1]):
                            fn, route = sides[k]
                            ops._straight_to_cpu = route
                            t0 = time.perf_counter()
                            for _ in range(n[k]):
                                fn()
                            times[k].append((time.perf_counter() - t0) / n[k] * 1e6)
                finally:
                    ops._straight_to_cpu = real
                    gc.enable()
            md = {k: statistics.median(v) for k, v in times.items()}
            print(f"{cell} {dtype_name} B={B} H={H}: straight {md['straight']:.2f}  "
                  f"full {md['full']:.2f}  torch {md['torch']:.2f}  "
                  f"straight/full {md['straight'] / md['full']:.3f}  "
                  f"straight/torch {md['straight'] / md['torch']:.3f}  "
                  f"full/torch {md['full'] / md['torch']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
