#!/usr/bin/env python
"""The row split schedule against the (row block, strip) one, in one process: an A/B of the
planner's LayerPlan::row_split (csrc/core/cpu/layer_impl.h) on rnnfast alone.

The planner reads RNNFAST_ROW_SPLIT (1 or 0) on every call, so this script times the same
module and input with the schedule forced each way, in blocks of back-to-back calls,
alternating the order round by round, and prints the medians, their ratio (row split time over
strip split time) and which schedule the planner picks by itself at that size (forward, and
backward for training; for a dense call of that size, also with --packed, where the planner
also weighs the lengths).

    python bench/row_split_ab.py --configs 50,16,64,64 100,32,128,128 --out results.json
    RNNFAST_SIMD=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/row_split_ab.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from harness.machine import import_rnnfast, machine_info, rnnfast_info  # noqa: E402

DEFAULT_CONFIGS = ["50,4,64,64", "200,4,128,128", "100,8,128,128", "50,16,64,64", "100,12,128,128",
                   "100,32,128,128", "100,8,256,256", "50,16,256,256", "64,32,64,256",
                   "100,64,256,256"]
ENV = "RNNFAST_ROW_SPLIT"


def _set_schedule(value):
    if value is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="T,B,I,H each")
    p.add_argument("--cells", default="LSTM,GRU", help="comma list of LSTM, GRU, RNN")
    p.add_argument("--layer-norm", action="store_true", help="layer_norm=True (LSTM, GRU)")
    p.add_argument("--packed", action="store_true",
                   help="a PackedSequence of lengths drawn from [T/4, T] (one of length T)")
    p.add_argument("--modes", default="inference,training")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--block-ms", type=float, default=20.0,
                   help="each sample is a block of back-to-back calls this long")
    p.add_argument("--out", help="write the rows as JSON here")
    a = p.parse_args(argv)
    rnnfast = import_rnnfast()
    if rnnfast is None:
        print(f"rnnfast cannot be imported: {rnnfast_info().get('error')}", file=sys.stderr)
        return 2
    if os.environ.get(ENV):
        print(f"unset {ENV}: this script sets it itself", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    rows = []
    print(f"simd={rnnfast._C.simd()} threads={a.threads} rounds={a.rounds} block={a.block_ms} ms")
    for config in a.configs:
        T, B, I, H = (int(v) for v in config.split(","))
        for cell in a.cells.split(","):
            kw = {"layer_norm": True} if a.layer_norm and cell != "RNN" else {}
            torch.manual_seed(0)
            m = getattr(rnnfast, cell)(I, H, **kw)
            for mode in a.modes.split(","):
                train = mode == "training"
                x = torch.randn(T, B, I, requires_grad=train)
                gen = torch.Generator().manual_seed(1)
                lengths = torch.randint(max(1, T // 4), T + 1, (B,), generator=gen)
                lengths[0] = T

                def call():
                    inp = (torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
                           if a.packed else x)
                    with torch.set_grad_enabled(train):
                        out = m(inp)[0]
                    if train:
                        (out.data if a.packed else out).sum().backward()

                for v in ("1", "0"):  # warm-up, then the block size from one call
                    _set_schedule(v)
                    call()
                t0 = time.perf_counter()
                call()
                n = max(1, int(a.block_ms / 1e3 / (time.perf_counter() - t0)))
                samples = {"1": [], "0": []}
                for r in range(a.rounds):
                    for v in (("1", "0") if r % 2 == 0 else ("0", "1")):
                        _set_schedule(v)
                        t0 = time.perf_counter()
                        for _ in range(n):
                            call()
                        samples[v].append((time.perf_counter() - t0) / n * 1e3)
                _set_schedule(None)
                row_ms = statistics.median(samples["1"])
                strip_ms = statistics.median(samples["0"])
                name = {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn_tanh"}[cell] + ("_ln" if kw else "")
                # (_C.plan takes no lengths: for packed rows it shows the dense call's plan)
                auto = ["row_split=1" in rnnfast._C.plan(name, bwd, T, B, I, H, 0, a.threads,
                                                         training=train)
                        for bwd in ((False, True) if train else (False,))]
                rows.append({"cell": cell + ("_ln" if kw else ""), "config": config, "mode": mode,
                             "packed": a.packed,
                             "row_split_ms": row_ms, "strip_split_ms": strip_ms,
                             "ratio": row_ms / strip_ms,
                             "planner_row_split": dict(zip(("forward", "backward"), auto))})
                print(f"{rows[-1]['cell']:7s} {config:>15s} {mode:9s} strip {strip_ms:8.3f} ms  "
                      f"row {row_ms:8.3f} ms  row/strip {row_ms / strip_ms:.3f}  "
                      "planner: " + " ".join(("row" if v else "strip") for v in auto), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"machine": machine_info(), "simd": rnnfast._C.simd(),
                                           "threads": a.threads, "rounds": a.rounds,
                                           "block_ms": a.block_ms, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
