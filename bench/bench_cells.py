#!/usr/bin/env python
"""The cells, one step per call as a Python loop runs them: rnnfast's LSTMCell / GRUCell
against torch's, on each of rnnfast's SIMD paths, in the same interleaved rounds.

A cell call takes microseconds, so each timed sample is a block of calls (enough for about a
millisecond), and every round times each implementation once (rnnfast on every SIMD path the
CPU has, switched with rnnfast._C.set_simd before its block, then torch), the order rotated
each round. Training is one forward and the backward of sum(h) (+ sum(c)) from a fresh
graph, as a truncated-BPTT loop of length one does.

    python bench/bench_cells.py                          # the grid below, ~10 minutes
    python bench/bench_cells.py --cells lstm --dtypes float64 --batches 16 --hidden 128
    python bench/bench_cells.py --quick                  # a few rows, short budget

Writes bench/results/cells-<timestamp>.json unless --no-json.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness.load import OtherLoad  # noqa: E402
from harness.machine import import_rnnfast, machine_info  # noqa: E402
from harness.report import write_json  # noqa: E402
from harness.timing import rounds, summarize  # noqa: E402

CELLS = {"lstm": "LSTMCell", "gru": "GRUCell", "rnn": "RNNCell"}


def _ints(text: str):
    return [int(v) for v in text.split(",")]


def _step_fn(module, x, state, training: bool):
    """One call of the cell as a loop runs it: inference under no_grad, or training (the
    forward and the backward of its outputs' sum)."""
    def infer():
        with torch.no_grad():
            module(x, state)

    def train():
        out = module(x, state)
        loss = sum(o.sum() for o in out) if isinstance(out, tuple) else out.sum()
        loss.backward()
    return train if training else infer


def _block_timer(fn, n: int):
    """A call that runs fn n times and returns the seconds per call."""
    def call() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n
    return call


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="lstm,gru")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--batches", default="1,16,128")
    ap.add_argument("--hidden", default="32,128,512", help="hidden sizes (input size the same)")
    ap.add_argument("--modes", default="inference,training")
    ap.add_argument("--isas", default="avx512,avx2", help="rnnfast's paths to time (those the "
                    "CPU supports)")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of rounds per row")
    ap.add_argument("--quick", action="store_true", help="two sizes, short budget")
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--no-json", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.batches, args.hidden, args.budget = "1,16", "32", 0.2
    rf = import_rnnfast(prefer_tree=True)
    if rf is None:
        print("rnnfast does not import; build it first (bash scripts/setup.sh)")
        return 2
    isas = [i for i in args.isas.split(",") if rf._C.cpu_supports(i)]
    initial = rf._C.simd()
    names = [f"rnnfast-{i}" for i in isas] + ["torch"]
    print(f"cells, one step per call; {torch.get_num_threads()} threads; rnnfast paths {isas}")
    print(f"{'cell':<5} {'dtype':<8} {'B':>4} {'H':>4} {'mode':<10} " +
          " ".join(f"{n + ' us':>16}" for n in names) + " " +
          " ".join(f"{'ratio ' + i:>12}" for i in isas) + "  other-load")
    rows = []
    try:
        for cell in args.cells.split(","):
            for dtype_name in args.dtypes.split(","):
                dtype = getattr(torch, dtype_name)
                for B in _ints(args.batches):
                    for H in _ints(args.hidden):
                        for mode in args.modes.split(","):
                            rows.append(_row(rf, cell, dtype, B, H, mode, isas, names, args))
    finally:
        rf._C.set_simd(initial)
    if not args.no_json:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        path = args.out_dir / f"cells-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
        write_json(path, {"script": "bench/bench_cells.py", "machine": machine_info(),
                          "threads": torch.get_num_threads(), "isas": isas,
                          "budget_s_per_row": args.budget, "results": rows})
        print(f"wrote {path}")
    return 0


def _row(rf, cell, dtype, B, H, mode, isas, names, args) -> dict:
    torch.manual_seed(0)
    ref = getattr(torch.nn, CELLS[cell])(H, H).to(dtype)
    fast = getattr(rf, CELLS[cell])(H, H).to(dtype)
    fast.load_state_dict(ref.state_dict())
    training = mode == "training"
    x = torch.randn(B, H, dtype=dtype, requires_grad=training)
    h = torch.randn(B, H, dtype=dtype)
    state = (h, torch.randn(B, H, dtype=dtype)) if cell == "lstm" else h
    fns = {"torch": _step_fn(ref, x, state, training)}
    fast_fn = _step_fn(fast, x, state, training)
    for isa in isas:
        def on_path(isa=isa):
            rf._C.set_simd(isa)
            fast_fn()
        fns[f"rnnfast-{isa}"] = on_path
    # calls per timed block: about a millisecond of the slowest implementation
    per_call = {}
    for n, f in fns.items():
        for _ in range(3):
            f()
        t0 = time.perf_counter()
        for _ in range(5):
            f()
        per_call[n] = (time.perf_counter() - t0) / 5
    block = max(1, int(1e-3 / max(per_call.values())))
    calls = {n: _block_timer(fns[n], block) for n in names}
    reps = max(5, min(200, int(args.budget / max(sum(per_call.values()) * block, 1e-9))))
    with OtherLoad() as load:
        samples = rounds(calls, reps)
    times = {n: summarize(samples[n]) for n in names}
    us = {n: times[n]["median_ms"] * 1e3 for n in names}
    ratios = {i: us[f"rnnfast-{i}"] / us["torch"] for i in isas}
    print(f"{cell:<5} {str(dtype)[6:]:<8} {B:>4} {H:>4} {mode:<10} " +
          " ".join(f"{us[n]:16.1f}" for n in names) + " " +
          " ".join(f"{ratios[i]:12.3f}" for i in isas) +
          f"  {load.fraction if load.fraction is None else round(load.fraction, 3)}",
          flush=True)
    return {"cell": cell, "dtype": str(dtype)[6:], "B": B, "I": H, "H": H, "mode": mode,
            "calls_per_sample": block, "times": times, "ratio_vs_torch": ratios,
            "other_load": load.fraction}


if __name__ == "__main__":
    sys.exit(main())
