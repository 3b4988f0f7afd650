#!/usr/bin/env python
"""rnnfast's SIMD paths against each other, in the same interleaved rounds.

Two runs of bench_cpu.py with different RNNFAST_SIMD settings cannot say which path is faster:
the machine's speed drifts between runs (on this project's machines by 1.5x between two runs an
hour apart). Here every round calls each path once (switching with rnnfast._C.set_simd before
the call, the order rotated each round), so the medians of one run compare.

    python bench/isa_compare.py                                   # default configs
    python bench/isa_compare.py --config 50,16,64,64 --cells lstm --modes training
    python bench/isa_compare.py --isas avx2,avx512 --budget 4 --out-dir bench/results

Writes bench/results/isa-<timestamp>.json unless --no-json.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness.load import OtherLoad  # noqa: E402
from harness.machine import import_rnnfast, machine_info  # noqa: E402
from harness.timing import rounds, summarize  # noqa: E402

CELLS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
DEFAULT_CONFIGS = ["50,16,64,64", "100,32,128,128", "200,4,128,128", "25,64,128,128"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", help="T,B,I,H (repeatable)")
    ap.add_argument("--cells", default="lstm,gru")
    ap.add_argument("--modes", default="training,inference")
    ap.add_argument("--isas", default="avx2,avx512")
    ap.add_argument("--budget", type=float, default=3.0, help="seconds of rounds per row")
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--no-json", action="store_true")
    args = ap.parse_args(argv)
    rf = import_rnnfast(prefer_tree=True)  # the tree's build, not an installed one
    if rf is None:
        print("rnnfast does not import; build it first (bash scripts/setup.sh)")
        return 2
    isas = [i for i in args.isas.split(",") if rf._C.cpu_supports(i)]
    if len(isas) < 2:
        print(f"this CPU supports fewer than two of {args.isas}: nothing to compare")
        return 0
    initial = rf._C.simd()
    rows = []
    print(f"{'T,B,I,H':<16} {'cell':<5} {'mode':<10} " +
          " ".join(f"{i + ' ms':>12}" for i in isas) + f"  {isas[-1]}/{isas[0]}  other-load")
    try:
        for cfg in args.config or DEFAULT_CONFIGS:
            T, B, I, H = (int(v) for v in cfg.split(","))
            for cell in args.cells.split(","):
                for mode in args.modes.split(","):
                    torch.manual_seed(0)
                    m = getattr(rf, CELLS[cell])(I, H).train(mode == "training")
                    x = torch.randn(T, B, I, requires_grad=mode == "training")

                    def run(isa, m=m, x=x, mode=mode):
                        rf._C.set_simd(isa)
                        t0 = time.perf_counter()
                        if mode == "training":
                            m(x)[0].sum().backward()
                        else:
                            with torch.no_grad():
                                m(x)
                        return time.perf_counter() - t0

                    calls = {i: (lambda i=i: run(i)) for i in isas}
                    for c in calls.values():   # warm-up: allocations, scratch cache
                        c(), c()
                    per_round = sum(statistics.median([c() for _ in range(3)])
                                    for c in calls.values())
                    reps = max(5, min(500, int(args.budget / max(per_round, 1e-6))))
                    with OtherLoad() as load:
                        samples = rounds(calls, reps)
                    other = load.fraction
                    med = {i: summarize(samples[i]) for i in isas}
                    ratio = med[isas[-1]]["median_ms"] / med[isas[0]]["median_ms"]
                    rows.append({"config": {"T": T, "B": B, "I": I, "H": H}, "cell": cell,
                                 "mode": mode, "times": med, "ratio": ratio,
                                 "other_load": other})
                    print(f"{cfg:<16} {cell:<5} {mode:<10} " +
                          " ".join(f"{med[i]['median_ms']:12.3f}" for i in isas) +
                          f"  {ratio:8.3f}  {other if other is None else round(other, 3)}",
                          flush=True)
    finally:
        rf._C.set_simd(initial)
    if not args.no_json:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        path = args.out_dir / f"isa-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps({"script": "bench/isa_compare.py", "machine": machine_info(),
                                    "threads": torch.get_num_threads(), "isas": isas,
                                    "budget_s_per_row": args.budget, "results": rows},
                                   indent=1) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
