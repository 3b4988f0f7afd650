"""The stacked schedule of two layers (ops.stacked_layers; csrc/core/cpu/stack.cpp) against the
two layers one after the other (ops.layer twice) and torch.nn.LSTM / GRU, 2-layer inference.

    python bench/stack_probe.py [--rounds 15] [--threads 2]

The stacked op is forced onto the wavefront at every size (RNNFAST_STACK=1), so its column is
the schedule's own time even where its rule (stack_concurrent) would not take it. Interleaved
rounds, medians in ms, float32, no initial state. Results: bench/results/stack-2026-12-02.md.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import rnnfast  # noqa: E402
from rnnfast import ops  # noqa: E402

SHAPES = [(64, 1, 64, 256), (64, 8, 64, 256), (64, 32, 64, 256), (64, 1, 64, 128),
          (64, 8, 64, 128), (64, 32, 128, 128), (64, 1, 64, 64), (50, 16, 64, 64),
          (64, 4, 32, 32)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    print(f"# simd={rnnfast._C.simd()} threads={args.threads} torch={torch.__version__}")
    for kind in ("LSTM", "GRU"):
        for T, B, I, H in SHAPES:
            m = getattr(rnnfast, kind)(I, H, 2).eval()
            ref = getattr(torch.nn, kind)(I, H, 2).eval()
            x = torch.randn(T, B, I)
            cell = m._cell.name
            w0 = [getattr(m, n) for n in m._all_weights[0]]
            w1 = [getattr(m, n) for n in m._all_weights[1]]

            def seq():
                y, _ = ops.layer(cell, x, [], w0)
                ops.layer(cell, y, [], w1)

            def stk():
                os.environ["RNNFAST_STACK"] = "1"
                try:
                    ops.stacked_layers(cell, x, [], [], w0, w1)
                finally:
                    del os.environ["RNNFAST_STACK"]

            runs = {"seq": seq, "stk": stk, "torch": lambda: ref(x)}
            times = {k: [] for k in runs}
            with torch.no_grad():
                for f in runs.values():
                    f()
                    f()
                for _ in range(args.rounds):
                    for k, f in runs.items():
                        t = time.perf_counter()
                        f()
                        times[k].append(time.perf_counter() - t)
            md = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            print(f"{kind} {(T, B, I, H)} " + " ".join(f"{k} {v:.2f}" for k, v in md.items()) +
                  f" stk/seq {md['stk'] / md['seq']:.3f} stk/torch {md['stk'] / md['torch']:.3f}"
                  f" seq/torch {md['seq'] / md['torch']:.3f}")


if __name__ == "__main__":
    main()
