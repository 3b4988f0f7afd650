#!/usr/bin/env python
"""Issue 17's speed targets, read from bench_cpu.py results: which rows meet each target and,
for each miss, its size and the rate the target would need.

    python bench/targets.py bench/results/cpu-20261202-142419.json
    python bench/targets.py --peak-gflops 472 bench/results/cpu-*.json

For every miss the table gives the row's ratio, the path's GFLOP/s, and the GFLOP/s it would
need to meet the target at the same torch time (the path's rate x ratio / target), also as a
percentage of the run's GEMM rate (torch.mm, the `%sgemm` column's reference) and, with
--peak-gflops, of a peak the caller measured on the run's host (e.g. the FMA units' rate on all
threads; give one host's files per call). A miss
whose needed rate is near or over what the machine's GEMM runs at is held by arithmetic; one
well under it is held by something else (the profile says what).

The targets (issue 17, rnnfast time / torch time, same run):
- 2-layer and bidirectional rows: <= 0.75, training and inference, on every SIMD path;
- the AVX2 path: <= 1 on every row; LSTM <= 0.6 at B <= 16 or H <= 128; GRU training <= 0.4;
  inference no slower than each ONNX peer in the run;
- a float64 run (bench_cpu.py --dtype float64): <= 1 on every row.
The AVX2 path is the `rnnfast` column on a CPU without AVX-512 and the `avx2` column on one
with it; there torch runs its AVX-512 code, so those rows are marked as not the standing of an
AVX2-only CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple


def paths_of(run: dict) -> Dict[str, str]:
    """{column: its SIMD path} for the rnnfast columns of a run."""
    native = ((run.get("rnnfast") or {}).get("simd")) or "native"
    out = {"rnnfast": native}
    if "rnnfast-avx2" in run.get("implementations", []):
        out["rnnfast-avx2"] = "avx2"
    return out


def targets_of(run: dict) -> Iterator[Tuple[str, str, float, callable]]:
    """(target name, column, bound, row filter) of a run."""
    f64 = (run.get("settings") or {}).get("dtype") == "float64"
    for col, path in paths_of(run).items():
        if f64:
            yield f"float64 {path}: every row <= 1", col, 1.0, lambda r: True
            continue
        yield (f"{path}: 2-layer and bidirectional <= 0.75", col, 0.75,
               lambda r: r["case"]["layers"] > 1 or r["case"]["bidirectional"])
        if path != "avx2":
            continue
        yield f"{path}: every row <= 1", col, 1.0, lambda r: True
        yield (f"{path}: LSTM at B <= 16 or H <= 128 <= 0.6", col, 0.6,
               lambda r: r["cell"] == "lstm" and (r["case"]["B"] <= 16 or r["case"]["H"] <= 128))
        yield (f"{path}: GRU training <= 0.4", col, 0.4,
               lambda r: r["cell"] == "gru" and r["mode"] == "training")


def row_label(r: dict) -> str:
    c = r["case"]
    tag = r.get("tag") or "-"   # bench_cpu.py's extra column: 2L, 2L+bi, packed, padded
    return f"{r['cell']} {r['mode']:9} {c['T']},{c['B']},{c['I']},{c['H']}" + (
        "" if tag == "-" else f" {tag}")


def check_run(run: dict, peak: Optional[float]) -> List[dict]:
    """One entry per target: the rows it covers, met and missed (with the needed rate). `peak`
    is the native path's; the avx2 column of an AVX-512 CPU is held to half of it (vectors of
    half the width through the same FMA units)."""
    gemm = (run.get("sgemm") or {}).get("used_gflops")
    out = []
    for name, col, bound, keep in targets_of(run):
        col_peak = peak / 2 if peak and col == "rnnfast-avx2" else peak
        met, missed = 0, []
        for r in run["results"]:
            if not keep(r):
                continue
            t = (r["impls"].get(col) or {}).get("median_ms")
            base = (r["impls"].get("torch") or {}).get("median_ms")
            if not t or not base:
                continue
            ratio = t / base
            if ratio <= bound:
                met += 1
                continue
            rate = r["flops"] / (t * 1e-3) / 1e9
            need = rate * ratio / bound
            missed.append({"row": row_label(r), "ratio": ratio, "gflops": rate,
                           "need_gflops": need,
                           "need_pct_gemm": 100 * need / gemm if gemm else None,
                           "need_pct_peak": 100 * need / col_peak if col_peak else None})
        out.append({"target": name, "column": col, "met": met, "missed": missed})
    # the AVX2 path against the ONNX peers, inference rows (rnnfast/peer <= 1)
    for col, path in paths_of(run).items():
        if path != "avx2":
            continue
        for peer in (run.get("peers") or {}):
            met, missed = 0, []
            for r in run["results"]:
                t = (r["impls"].get(col) or {}).get("median_ms")
                p = (r["impls"].get(peer) or {}).get("median_ms")
                if r["mode"] != "inference" or not t or not p:
                    continue
                if t / p <= 1.0:
                    met += 1
                else:
                    missed.append({"row": row_label(r), "ratio": t / p})
            out.append({"target": f"{path}: inference no slower than {peer}", "column": col,
                        "met": met, "missed": missed})
    return out


def report(path: Path, run: dict, peak: Optional[float]) -> str:
    m = run.get("machine") or {}
    lines = [f"{path.name}: {m.get('cpu_model', '?')}, avx512f={m.get('avx512f')}, "
             f"{run.get('threads')} threads, {(run.get('settings') or {}).get('dtype', 'float32')}, "
             f"GEMM rate {((run.get('sgemm') or {}).get('used_gflops') or 0):.1f} GFLOP/s"]
    if m.get("avx512f") and "rnnfast-avx2" in run.get("implementations", []):
        lines.append("  (AVX-512 CPU: the avx2 column runs against torch's AVX-512 code; it is "
                     "not the standing of an AVX2-only CPU)")
    for t in check_run(run, peak):
        n = t["met"] + len(t["missed"])
        lines.append(f"  {t['target']}: met {t['met']} of {n}")
        for x in t["missed"]:
            s = f"    miss {x['row']}: {x['ratio']:.3f}"
            if "need_gflops" in x:
                s += f"; {x['gflops']:.0f} GFLOP/s, needs {x['need_gflops']:.0f}"
                if x["need_pct_gemm"] is not None:
                    s += f" ({x['need_pct_gemm']:.0f}% of the GEMM rate"
                    s += f", {x['need_pct_peak']:.0f}% of the peak)" if x["need_pct_peak"] else ")"
            lines.append(s)
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="bench_cpu.py JSON results")
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="a peak rate (all threads) to express the needed rates against")
    a = p.parse_args(argv)
    for path in a.runs:
        try:
            run = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            print(f"{path}: cannot read: {e}", file=sys.stderr)
            return 2
        if run.get("schema") != "rnnfast-bench-cpu/1":
            print(f"{path}: not a bench_cpu.py result (schema {run.get('schema')!r})",
                  file=sys.stderr)
            return 2
        print(report(path, run, a.peak_gflops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
