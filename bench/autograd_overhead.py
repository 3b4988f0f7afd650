"""Per-call cost of rnnfast's autograd path at tiny and mid sizes (1 thread).

Prints one line of medians (microseconds per call): an LSTM forward with grad at
T=B=1, I=H=8 (where the cost is almost all dispatch and autograd bookkeeping), the
same plus torch.autograd.grad, and a training call at T=50 B=16 I=H=64. To compare
two builds, run this script alternately with each on PYTHONPATH, several times, and
compare the medians (this host's noise is 6-20% between runs):

    for i in 1 2 3 4; do PYTHONPATH=old/python python bench/autograd_overhead.py old
                         PYTHONPATH=new/python python bench/autograd_overhead.py new; done
"""
import statistics
import sys
import time

import torch

import rnnfast


def bench(f, reps, rounds=25):
    for _ in range(reps):
        f()
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            f()
        samples.append((time.perf_counter() - t) / reps * 1e6)
    return statistics.median(samples)


def main(label):
    torch.set_num_threads(1)
    small = rnnfast.LSTM(8, 8)
    x = torch.randn(1, 1, 8, requires_grad=True)
    mid = rnnfast.LSTM(64, 64)
    xm = torch.randn(50, 16, 64, requires_grad=True)
    res = {
        "T1_fwd_grad": bench(lambda: small(x)[0], 300),
        "T1_fwd+bwd": bench(lambda: torch.autograd.grad(small(x)[0].sum(), x), 300),
        "50x16x64_fwd+bwd": bench(lambda: torch.autograd.grad(mid(xm)[0].sum(), xm), 10, 15),
    }
    print(label, " ".join(f"{k}={v:.1f}" for k, v in res.items()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "rnnfast")
