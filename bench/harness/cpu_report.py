"""bench_cpu.py's output: the text table (its columns depend on the implementations run),
the legend line naming the peers, and the PNG of the rows' time ratios."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from .load import OTHER_LOAD_LIMIT
from .registry import BASELINE, CANDIDATE, IMPLEMENTATIONS, label
from .report import Column, join_cells, num


def table_columns(impl_names: Sequence[str]) -> List[Column]:
    """The table's columns for the implementations run (report.Column: header, width, cell text
    from a row); cells are right-aligned to the width except the first two."""
    def case_col(key):
        return lambda row: str(row["case"][key])

    def ms_col(n):
        def get(row):
            r = row["impls"].get(n, {})
            return "ERROR" if r.get("error") else num(r.get("median_ms"), ".3f")
        return get

    def ratio_col(kind, n):
        return lambda row: num(row[kind].get(n), ".3f")

    def iqr(row):
        iqrs = [r["iqr_pct"] for r in row["impls"].values() if "iqr_pct" in r]
        return num(max(iqrs) if iqrs else None, ".0f")

    def chk(row):
        st = row["check"]["status"]
        return {"ok": "ok", "skipped": "-", "error": "ERR"}.get(st, "!! " + st.upper())

    cols = [("cell", 4, lambda row: row["cell"]), ("mode", 9, lambda row: row["mode"]),
            ("T", 5, case_col("T")), ("B", 3, case_col("B")), ("I", 4, case_col("I")),
            ("H", 4, case_col("H")), ("extra", 12, lambda row: row["tag"])]
    for n in impl_names:
        cols.append((f"{label(n)} ms", 11, ms_col(n)))
    others = [n for n in impl_names if n != BASELINE]
    for n in others:
        head = "ratio" if len(impl_names) == 2 else f"{label(n)}/{label(BASELINE)}"
        cols.append((head, 7, ratio_col("ratio", n)))
    if CANDIDATE in impl_names:
        for n in impl_names:
            if IMPLEMENTATIONS[n].peer:
                cols.append((f"{label(CANDIDATE)}/{label(n)}", 7, ratio_col("ratio_vs_peers", n)))
        cols += [(f"{CANDIDATE} GF/s", 12,
                  lambda row: num(row["impls"].get(CANDIDATE, {}).get("gflops"), ".1f")),
                 ("%sgemm", 6,
                  lambda row: num(row["impls"].get(CANDIDATE, {}).get("pct_sgemm"), ".0f"))]
    if BASELINE in impl_names:
        cols.append((f"{BASELINE} GF/s", 10,
                     lambda row: num(row["impls"].get(BASELINE, {}).get("gflops"), ".1f")))
    cols += [("iqr%", 5, iqr), ("check", 5, chk)]
    # at least as wide as the header; the first two (cell, mode) left-aligned
    return [(h, -max(w, len(h)) if i < 2 else max(w, len(h)), f)
            for i, (h, w, f) in enumerate(cols)]


def format_header(impl_names: Sequence[str]) -> str:
    cols = table_columns(impl_names)
    head = join_cells([h for h, _, _ in cols], cols)
    return head + "\n" + "-" * len(head)


def format_legend(impl_names: Sequence[str]) -> Optional[str]:
    """One line naming abbreviated implementations (peers' labels) and their versions."""
    parts = []
    for n in impl_names:
        impl = IMPLEMENTATIONS[n]
        if impl.label != n or impl.peer:
            ver = impl.version() if impl.version else None
            parts.append(f"{impl.label} = {n}" + (f" {ver}" if ver else ""))
    if not parts:
        return None
    return ("columns: " + ", ".join(parts)
            + (f"; {label(CANDIDATE)}/<peer> = {CANDIDATE} time / peer time "
               f"(< 1: {CANDIDATE} faster)" if CANDIDATE in impl_names else ""))


def format_row(row: dict, impl_names: Sequence[str]) -> str:
    cols = table_columns(impl_names)
    line = join_cells([f(row) for _, _, f in cols], cols)
    chk = row["check"]
    other = row.get("other_load")
    if other is not None and other > OTHER_LOAD_LIMIT:
        line += f" (other processes used {100 * other:.0f}% of the CPUs)"
    if chk["status"] == "mismatch":
        line += "  <<< " + chk.get("summary", "")
    for n in impl_names:
        err = row["impls"].get(n, {}).get("error")
        if err:
            line += f"\n      {n}: {err}"
    return line


def png_series(impl_names: Sequence[str]) -> List[Tuple[str, Callable[[dict], Optional[float]],
                                                       Tuple[str, ...]]]:
    """What the PNG plots: (label, ratio from a row, implementations whose check it depends on).
    With CANDIDATE present: CANDIDATE's time over each other implementation's (baseline first,
    then peers), so every bar reads "< 1: CANDIDATE faster". Without it: <impl>/<baseline>."""
    others = [n for n in impl_names if n != CANDIDATE]
    if CANDIDATE in impl_names and others:
        out = []
        for n in others:
            if n == BASELINE:
                out.append((f"{label(CANDIDATE)}/{label(n)}",
                            lambda r: r["ratio"].get(CANDIDATE), (CANDIDATE,)))
            elif IMPLEMENTATIONS.get(n) is not None and IMPLEMENTATIONS[n].peer:
                out.append((f"{label(CANDIDATE)}/{label(n)}",
                            lambda r, n=n: r["ratio_vs_peers"].get(n), (CANDIDATE, n)))
        return out
    return [(f"{label(n)}/{label(BASELINE)}", lambda r, n=n: r["ratio"].get(n), (n,))
            for n in impl_names if n != BASELINE]


def _series_mismatch(row: dict, deps: Tuple[str, ...]) -> bool:
    per = row["check"].get("per_impl", {})   # absent when nothing was checked against BASELINE
    return any(per.get(n) == "mismatch" for n in deps)


def write_png(rows: List[dict], impl_names: Sequence[str], path: Path,
              title: str = "rnnfast CPU benchmark") -> Optional[str]:
    """Horizontal bar chart of time ratios (see png_series). Returns a note if skipped."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"matplotlib not available ({type(e).__name__}); PNG skipped (pip install matplotlib)"
    series = png_series(impl_names)
    if not series or not rows:
        return "nothing to plot; PNG skipped"
    from matplotlib.patches import Patch
    labels = [f"{r['cell']} {r['mode'][:5]} T{r['case']['T']} B{r['case']['B']} "
              f"I{r['case']['I']} H{r['case']['H']}"
              + ("" if r["tag"] == "-" else f" {r['tag']}") for r in rows]
    hatches = [None, "//", "..", "xx", "\\\\", "++"]
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(rows) * len(series) + 1.8))
    height = 0.8 / len(series)   # one bar per series per row
    vals_all = [v for r in rows for _, get, _ in series for v in [get(r)] if v]
    lo = min(vals_all + [0.5]) / 1.3
    hi = max(vals_all + [2.0]) * 1.8   # room for the value labels
    for k, (name, get, deps) in enumerate(series):
        for i, r in enumerate(rows):
            y = i + k * height
            v = get(r)
            if not v:
                err = any(r["impls"].get(n, {}).get("error") for n in deps)
                why = next((r["impls"][n]["unsupported"] for n in deps
                            if r["impls"].get(n, {}).get("unsupported")), "")
                ax.text(lo * 1.05, y, f"{name}: " + ("error" if err else f"n/a {why}".strip()),
                        va="center", fontsize=6, color="tab:red" if err else "grey")
                continue
            bad = _series_mismatch(r, deps)
            loaded = (r.get("other_load") or 0) > OTHER_LOAD_LIMIT
            color = ("tab:red" if bad else "lightgrey" if loaded else
                     "tab:green" if v < 1 else "tab:orange")
            ax.barh(y, v - lo, left=lo, height=height, color=color,
                    hatch=hatches[k % len(hatches)], edgecolor="black", linewidth=0.3)
            ax.text(v * 1.02, y, f"{v:.2f}" + (f" {name}" if len(series) > 1 else "")
                    + (" MISMATCH" if bad else "")
                    + (" (loaded machine)" if loaded else ""), va="center", fontsize=6)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ticks = [t for t in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 10, 20, 50) if lo <= t <= hi]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks([i + (len(series) - 1) * height / 2 for i in range(len(rows))])
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_ylim(len(rows) - 0.5 + (len(series) - 1) * height, -0.5)
    first = series[0][0].split("/")[0]
    ax.set_xlabel(f"median time ratio (log scale; < 1 = {first} faster)"
                  + ("" if len(series) == 1 else
                     f"; bars per row, top to bottom: {', '.join(n for n, _, _ in series)}"),
                  fontsize=8)
    ax.set_title(title, fontsize=9)
    handles = [Patch(color="tab:green", label=f"{first} faster"),
               Patch(color="tab:orange", label=f"{first} slower"),
               Patch(color="tab:red", label="output mismatch"),
               Patch(color="lightgrey", label="timed on a loaded machine")]
    if len(series) > 1:
        handles += [Patch(facecolor="white", edgecolor="black", hatch=hatches[k % len(hatches)],
                          label=name) for k, (name, _, _) in enumerate(series)]
    # Below the plot, so it never covers bars near 1.
    legend = ax.legend(handles=handles, fontsize=7, loc="upper center", ncol=4,
                       bbox_to_anchor=(0.5, -0.6 / fig.get_size_inches()[1]), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_extra_artists=[legend], bbox_inches="tight")
    plt.close(fig)
    return None
