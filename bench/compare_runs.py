"""Compares two bench_cpu.py runs of the same grid: one of a build before a change, one after.

Each run measures rnnfast against torch in the same process, interleaved; the number compared
here is that same-run ratio (rnnfast median / torch median), so that the two runs' different
machine states cancel as far as they affect both. For each row:

    change = (rnnfast/torch after) / (rnnfast/torch before)     < 1: the change made rnnfast faster

and over all rows the geometric mean and the range of the changes.

    python bench/compare_runs.py BEFORE.json AFTER.json [--label-before X --label-after Y]
"""
from __future__ import annotations

import argparse
import json
import math
from typing import Dict, List, Tuple


def _key(row: dict) -> Tuple:
    c = row["case"]
    return (row["cell"], row["mode"], c["T"], c["B"], c["I"], c["H"], c["layers"],
            c["bidirectional"], c["variant"])


def _label(key: Tuple) -> str:
    cell, mode, T, B, I, H, layers, bi, variant = key
    extra = [f"{layers}L"] if layers > 1 else []
    extra += ["bi"] if bi else []
    extra += [variant] if variant != "plain" else []
    return f"{cell:<5} {mode:<9} {T:>5} {B:>3} {I:>4} {H:>5} {'+'.join(extra) or '-':>8}"


def ratios(path: str) -> Dict[Tuple, float]:
    """rnnfast/torch median ratio per row of a bench_cpu.py JSON file."""
    with open(path) as f:
        data = json.load(f)
    out = {}
    for row in data["results"]:
        impls = row["impls"]
        if "rnnfast" in impls and "torch" in impls:
            out[_key(row)] = impls["rnnfast"]["median_ms"] / impls["torch"]["median_ms"]
    return out


Row = Tuple[Tuple, float, float, float]


def compare(before: Dict[Tuple, float], after: Dict[Tuple, float]) -> List[Row]:
    """(row, before ratio, after ratio, change) for the rows both runs have, in before's order."""
    return [(k, before[k], after[k], after[k] / before[k]) for k in before if k in after]


def format_table(rows: List[Row], label_before: str, label_after: str) -> str:
    head = (f"{'cell':<5} {'mode':<9} {'T':>5} {'B':>3} {'I':>4} {'H':>5} {'extra':>8}  "
            f"{label_before + ' r/t':>14} {label_after + ' r/t':>14} {'change':>7}")
    lines = [head, "-" * len(head)]
    for key, b, a, ch in rows:
        lines.append(f"{_label(key)}  {b:>14.3f} {a:>14.3f} {ch:>7.3f}")
    if rows:
        changes = [ch for *_, ch in rows]
        geo = math.exp(sum(math.log(c) for c in changes) / len(changes))
        lines.append(f"rows: {len(rows)}; change (after/before of rnnfast/torch): geometric mean "
                     f"{geo:.3f}, min {min(changes):.3f}, max {max(changes):.3f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--label-before", default="before")
    ap.add_argument("--label-after", default="after")
    args = ap.parse_args()
    rows = compare(ratios(args.before), ratios(args.after))
    if not rows:
        raise SystemExit("compare_runs: the two runs share no row (different grids?)")
    print(format_table(rows, args.label_before, args.label_after))


if __name__ == "__main__":
    main()
