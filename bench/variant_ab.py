#!/usr/bin/env python
"""A variant against its plain cell on rnnfast, nothing else in the process: in-process A/B.

bench_variants.py times every implementation of a row in the same rounds, the Python-loop
baselines included, so each rnnfast call starts after a different kind of work. This script
times only the two rnnfast modules (the variant of bench_variants.VARIANTS and its plain
cell), in blocks of back-to-back calls, alternating the two (and the thread counts asked for)
round by round, and prints the medians and the ratio. Run it twice to see how much of a
ratio is the host's state: this project's machine has shifted both timings by up to 2x
between processes minutes apart.

    python bench/variant_ab.py --variant lstm_layer_norm --config 50,16,64,64 --mode inference
    python bench/variant_ab.py --variant gru_layer_norm --config 200,4,128,128 --threads 1,2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from bench_variants import VARIANTS  # noqa: E402
from harness.machine import import_rnnfast, rnnfast_info  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    p.add_argument("--config", default="50,16,64,64", help="T,B,I,H")
    p.add_argument("--mode", default="inference", choices=["inference", "training"])
    p.add_argument("--threads", default="2", help="comma list of thread counts")
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--calls", type=int, default=5, help="back-to-back calls per sample")
    a = p.parse_args(argv)
    rnnfast = import_rnnfast()
    if rnnfast is None:
        print(f"rnnfast cannot be imported: {rnnfast_info().get('error')}", file=sys.stderr)
        return 2
    T, B, I, H = (int(v) for v in a.config.split(","))
    module, kwargs = VARIANTS[a.variant]
    torch.manual_seed(0)
    mods = {"plain": getattr(rnnfast, module)(I, H), a.variant: getattr(rnnfast, module)(I, H, **kwargs)}
    for m in mods.values():
        m.train(a.mode == "training")
    x = torch.randn(T, B, I, requires_grad=a.mode == "training")

    def call(m):
        if a.mode == "training":
            y, _ = m(x)
            y.sum().backward()
        else:
            with torch.no_grad():
                m(x)

    threads = [int(t) for t in a.threads.split(",")]
    samples = {}
    for th in threads:  # warm-up
        torch.set_num_threads(th)
        for m in mods.values():
            for _ in range(a.calls):
                call(m)
    for _ in range(a.rounds):
        for th in threads:
            torch.set_num_threads(th)
            for name, m in mods.items():
                t0 = time.perf_counter()
                for _ in range(a.calls):
                    call(m)
                samples.setdefault((name, th), []).append((time.perf_counter() - t0) / a.calls)
    print(f"{a.config} {a.mode} simd={rnnfast._C.simd()} rounds={a.rounds} calls/sample={a.calls}")
    for th in threads:
        plain = statistics.median(samples["plain", th]) * 1e3
        var = statistics.median(samples[a.variant, th]) * 1e3
        print(f"  threads={th}: plain {plain:.3f} ms, {a.variant} {var:.3f} ms, "
              f"ratio {var / plain:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
