"""Markdown tables from bench_variants.py runs, with the bound on each speedup.

For every row of each JSON file: the variant's rnnfast time against the plain cell's
(/plain, the issue's target), the speedup over the baseline users write today, and that
speedup's compute bound: the baseline's time over the time the variant's GEMM work would take
at the run's own SGEMM rate (torch.mm 1024x1024, measured in the run):

    GEMM FLOPs = 2 * T * B * (I + H) * G * H   forward (G gate rows: 4 LSTM, 3 coupled LSTM
                                               and GRU), three times that in training
                                               (forward, dX + dh, dW)
    bound      = baseline ms / (GEMM FLOPs / SGEMM rate)

No implementation can beat the baseline by more than the bound on that machine, so a speedup
target above it cannot be met at that config. Zoneout rows in training also show the share
of the masks' draw (rnnfast.ops.keep_mask), when the run timed it.

    python bench/variants_report.py bench/results/variants-*.json > report.md
"""
from __future__ import annotations

import json
import sys
from typing import List


def gates(row: dict) -> int:
    if row["module"] == "GRU":
        return 3
    return 3 if row["kwargs"].get("coupled_gates") else 4


def gemm_flops(row: dict) -> float:
    c = row["config"]
    forward = 2.0 * c["T"] * c["B"] * (c["I"] + c["H"]) * gates(row) * c["H"]
    return forward * (3 if row["mode"] == "training" else 1)


def fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def report(path: str) -> List[str]:
    with open(path) as f:
        data = json.load(f)
    gflops = data["sgemm"]["gflops"]
    info = data["rnnfast"]
    block = data["settings"].get("block_ms", 0)
    lines = [f"### {path}", "",
             f"{data['started']}, {data['machine'].get('cpu_model', '?')}, {data['threads']} threads, "
             f"SIMD path {info.get('simd', '?')}, torch {data['machine'].get('torch_version', '?')}, "
             f"SGEMM {gflops:.1f} GFLOP/s; {data['settings'].get('budget_s_per_row', '?')} s per row, "
             f"interleaved medians" + (f" of blocks of about {block:g} ms of back-to-back calls "
                                       f"per implementation" if block else " of single calls")
             + ".", "",
             "| T,B,I,H | mode | variant | rnnfast ms | /plain | target | baseline | base ms "
             "| speedup | bound | mask draw ms | /plain w/o draw |",
             "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in data["results"]:
        c = r["config"]
        t = r["rnnfast"].get("median_ms")
        base = r["baseline"].get("median_ms")
        bound = base / (gemm_flops(r) / (gflops * 1e9) * 1e3) if base else None
        lines.append(
            f"| {c['T']},{c['B']},{c['I']},{c['H']} | {r['mode']} | {r['variant']} | "
            f"{fmt(t, '.3f')} | {fmt(r.get('ratio_vs_plain'), '.3f')} | "
            f"{fmt(r.get('ratio_target'), '.2f')} | {r['baseline'].get('kind', '-')} | "
            f"{fmt(base, '.2f')} | {fmt(r.get('speedup'), '.1f')} | {fmt(bound, '.1f')} | "
            f"{fmt(r.get('mask_draw_ms'), '.3f')} | "
            f"{fmt(r.get('ratio_vs_plain_without_draw'), '.3f')} |")
    return lines + [""]


def main(argv=None) -> int:
    paths = (argv if argv is not None else sys.argv[1:])
    if not paths:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    for p in paths:
        print("\n".join(report(p)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
