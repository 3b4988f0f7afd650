#!/usr/bin/env python
"""CPU benchmark: rnnfast vs torch.nn (LSTM / GRU / RNN), inference and training.

Every config is timed for all implementations in the same process, in interleaved rounds
(A, B, A, B, ... with the order rotated each round), and medians are reported, because this
host's run-to-run noise (6-20%) is larger than many of the differences we care about.

    python bench/bench_cpu.py --quick                 # < 1 minute smoke run
    python bench/bench_cpu.py                         # default grid, several minutes
    python bench/bench_cpu.py --cells lstm,gru --modes inference --threads 1
    python bench/bench_cpu.py --config 100,32,256,256 --config 50,1,64,64:2L+bi

See bench/README.md for the columns and the method. The parts are in bench/harness/: the shapes
(cases.py), the implementations (registry.py, onnx_peers.py), the check (checks.py), the
interleaved timing (timing.py, load.py) and the table and PNG (cpu_report.py); this file is
the command line and the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from harness.cases import (CELLS, MODES, Case, default_grid, make_inputs,  # noqa: E402
                           make_reference, parse_config, quick_grid)
from harness.checks import TOLERANCES, check, describe_mismatch  # noqa: E402
from harness.cpu_report import (format_header, format_legend, format_row,  # noqa: E402
                                write_png)
from harness.load import (OTHER_LOAD_LIMIT, cpu_busy_fraction, loadavg,  # noqa: E402
                          wait_for_idle)
from harness.machine import machine_info, rnnfast_info  # noqa: E402
from harness.registry import (BASELINE, CANDIDATE, IMPLEMENTATIONS, PEERS_ERR,  # noqa: E402
                              package_versions, peer_names)
from harness.report import write_json  # noqa: E402
from harness.runners import Runner, Unsupported  # noqa: E402
from harness.timing import (add_timing_args, fill_timing_defaults, sgemm_rate,  # noqa: E402
                            summarize, time_interleaved)


def run_one(cell: str, mode: str, case: Case, impl_names: Sequence[str], sgemm: float,
            args) -> dict:
    """One row: build every implementation on the same weights and input, check each against
    BASELINE, time them in the same interleaved rounds, and compute the ratios."""
    ref_mod = make_reference(cell, case, args.seed, args.torch_dtype)
    inputs = make_inputs(case, args.seed, args.torch_dtype)
    flops = case.flops(cell, mode)
    row = {"cell": cell, "mode": mode, "tag": case.tag, "case": dataclasses.asdict(case),
           "flops": flops, "impls": {}, "ratio": {}, "ratio_vs_peers": {},
           "check": {"status": "skipped"}}
    runners: Dict[str, Runner] = {}
    runtime: Dict[str, dict] = {}
    for n in impl_names:
        try:
            runners[n] = IMPLEMENTATIONS[n].factory(cell, case, mode, ref_mod)
        except Unsupported as e:
            row["impls"][n] = {"unsupported": str(e)}
        except Exception as e:  # noqa: BLE001
            row["impls"][n] = {"error": f"build: {type(e).__name__}: {e}"}
            if args.verbose:
                traceback.print_exc()
        else:
            describe = getattr(runners[n], "describe", None)
            if describe is not None:   # peers: exporter, ONNX ops, runtime settings
                try:
                    runtime[n] = describe()
                except Exception as e:  # noqa: BLE001
                    runtime[n] = {"describe_error": f"{type(e).__name__}: {e}"}

    # Verify every non-baseline runner against the baseline; drop runners that raise.
    if BASELINE in runners:
        statuses = []
        for n in list(runners):
            if n == BASELINE:
                continue
            try:
                ok, det = check(runners[n], runners[BASELINE], inputs, mode)
            except Unsupported as e:
                row["impls"][n] = {"unsupported": str(e)}
                runners.pop(n)
                continue
            except Exception as e:  # noqa: BLE001
                row["impls"][n] = {"error": f"run: {type(e).__name__}: {e}"}
                if args.verbose:
                    traceback.print_exc()
                runners.pop(n)
                continue
            row["check"].setdefault("details", {})[n] = det
            row["check"].setdefault("per_impl", {})[n] = "ok" if ok else "mismatch"
            statuses.append(ok)
            if not ok:
                row["check"].setdefault("summary", "")
                row["check"]["summary"] = (row["check"]["summary"] + " "
                                           + f"{n}: {describe_mismatch(det)}").strip()
        if statuses:
            row["check"]["status"] = "ok" if all(statuses) else "mismatch"
        elif any(v.get("error") for v in row["impls"].values()):
            row["check"]["status"] = "error"

    if runners:
        try:
            samples, row["other_load"] = time_interleaved(
                runners, mode, inputs, budget=args.budget, warmup=args.warmup,
                min_reps=args.min_reps, max_reps=args.max_reps)
        except Exception:  # noqa: BLE001  (rare: failed after check passed) - time singly
            if args.verbose:
                traceback.print_exc()
            samples = {}
            for n, r in runners.items():
                try:
                    one, row["other_load"] = time_interleaved(
                        {n: r}, mode, inputs, budget=args.budget / 2, warmup=args.warmup,
                        min_reps=args.min_reps, max_reps=args.max_reps)
                    samples.update(one)
                except Exception as e2:  # noqa: BLE001
                    row["impls"][n] = {"error": f"timing: {type(e2).__name__}: {e2}"}
        for n, ts in samples.items():
            s = summarize(ts)
            s["gflops"] = flops / (s["median_ms"] * 1e-3) / 1e9
            s["pct_sgemm"] = 100.0 * s["gflops"] / sgemm if sgemm else None
            row["impls"][n] = s
    for n, d in runtime.items():
        row["impls"].setdefault(n, {})["runtime"] = d
    base = row["impls"].get(BASELINE, {}).get("median_ms")
    for n in impl_names:
        if n == BASELINE:
            continue
        t = row["impls"].get(n, {}).get("median_ms")
        row["ratio"][n] = (t / base) if (t and base) else None
    # CANDIDATE time / each peer's time (< 1: CANDIDATE faster than that peer).
    cand = row["impls"].get(CANDIDATE, {}).get("median_ms")
    if CANDIDATE in impl_names:
        for n in impl_names:
            if IMPLEMENTATIONS[n].peer:
                t = row["impls"].get(n, {}).get("median_ms")
                row["ratio_vs_peers"][n] = (cand / t) if (cand and t) else None
    return row


def _noise(row: dict) -> float:
    """Worst iqr% over the row's implementations, or inf when other processes loaded the CPUs
    during the timed rounds (contention can slow every call alike, keeping the iqr small)."""
    other = row.get("other_load")
    if other is not None and other > OTHER_LOAD_LIMIT:
        return math.inf
    iqrs = [r["iqr_pct"] for r in row["impls"].values() if "iqr_pct" in r]
    return max(iqrs) if iqrs else 0.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny grid, short budget: a smoke run that finishes in < 1 minute")
    p.add_argument("--cells", default=",".join(CELLS), help="comma list of lstm,gru,rnn")
    p.add_argument("--modes", default=",".join(MODES), help="comma list of inference,training")
    p.add_argument("--impls", default=None,
                   help=f"comma list from {list(IMPLEMENTATIONS)} (default: {CANDIDATE}, "
                        f"{BASELINE} and the peers chosen by --peers)")
    p.add_argument("--peers", default="all",
                   help=f"inference peers to add to {CANDIDATE} and {BASELINE} when --impls is "
                        f"not given: 'all' (default: those installed), 'none', or a comma list "
                        f"from {peer_names()}; peers are inference-only (n/a in training rows)")
    p.add_argument("--config", action="append", default=None, metavar="T,B,I,H[:OPTS]",
                   help="replace the grid (repeatable); OPTS: '+'-list of 2L, bi, packed")
    add_timing_args(p, per="(cell, mode, config)", quick_budget=0.15, quick_max_reps=30)
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="before starting and before each row, wait up to SECONDS for other "
                        "processes to leave the CPUs idle (< 15%% busy); rows that still "
                        "started on a busy machine are marked")
    p.add_argument("--retries", type=int, default=None,
                   help="rerun a row up to N more times while its iqr%% exceeds --noisy-iqr and "
                        "keep the quietest attempt (default 2, quick 0)")
    p.add_argument("--noisy-iqr", type=float, default=40.0,
                   help="iqr%% above which a row counts as noisy (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="the models' and inputs' dtype (default float32; the ONNX peers run "
                        "float32 only, n/a otherwise); %%sgemm is then against torch.mm in it")
    p.add_argument("--out-dir", type=Path, default=HERE / "results",
                   help="where cpu-<timestamp>.json/.png go (default bench/results)")
    p.add_argument("--no-json", action="store_true", help="do not write JSON")
    p.add_argument("--no-png", action="store_true", help="do not write the PNG")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="exit 0 even if an output/grad check failed")
    p.add_argument("-v", "--verbose", action="store_true", help="print tracebacks")
    a = p.parse_args(argv)
    q = a.quick
    a.torch_dtype = getattr(torch, a.dtype)
    fill_timing_defaults(a)
    a.retries = a.retries if a.retries is not None else (0 if q else 2)
    a.cells = [c.strip() for c in a.cells.split(",") if c.strip()]
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    for c in a.cells:
        if c not in CELLS:
            p.error(f"unknown cell {c!r}; choose from {CELLS}")
    for m in a.modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}; choose from {MODES}")
    if a.config:
        try:
            a.grid = [c for text in a.config for c in parse_config(text, a.seed)]
        except argparse.ArgumentTypeError as e:
            p.error(str(e))
    else:
        a.grid = quick_grid(a.seed) if q else default_grid(a.seed)
    return a


def choose_implementations(args) -> Tuple[Optional[List[str]], List[str], List[str]]:
    """(the implementations to run, notes to print, the implementations asked for). The first
    is None, with the reason printed, when the arguments are wrong."""
    peers_arg = args.peers.strip().lower()
    if args.impls:
        if peers_arg != "all":
            print("give either --impls or --peers, not both", file=sys.stderr)
            return None, [], []
        wanted = [s.strip() for s in args.impls.split(",") if s.strip()]
    else:
        if peers_arg == "all":
            peers = peer_names()
        elif peers_arg == "none":
            peers = []
        else:
            peers = [s.strip() for s in args.peers.split(",") if s.strip()]
            bad = [n for n in peers if n not in peer_names()]
            if bad:
                print(f"unknown peer(s) {bad}; known: {peer_names()}", file=sys.stderr)
                return None, [], []
        wanted = [n for n in IMPLEMENTATIONS if not IMPLEMENTATIONS[n].peer] + peers
    impl_names, notes = [], []
    if PEERS_ERR:
        notes.append(f"bench/harness/onnx_peers.py failed to load, no peers: {PEERS_ERR}")
    for n in wanted:
        if n not in IMPLEMENTATIONS:
            print(f"unknown implementation {n!r}; known: {list(IMPLEMENTATIONS)}", file=sys.stderr)
            return None, [], []
        ok, why = IMPLEMENTATIONS[n].available()
        if ok:
            impl_names.append(n)
        else:
            notes.append(f"{n} unavailable, column dropped: {why}")
    if any(IMPLEMENTATIONS[n].peer for n in impl_names):
        notes.append("peers (" + ", ".join(n for n in impl_names if IMPLEMENTATIONS[n].peer)
                     + ") run inference only (n/a in training rows), float32 (n/a in a float64 run), "
                       "the torch model "
                       "exported to ONNX; packed rows feed the ONNX ops' sequence_lens")
    return impl_names, notes, wanted


def run_grid(args, impl_names: Sequence[str], sgemm: float) -> List[dict]:
    """Every (cell, mode, case) row, printed as it is done; a noisy row is rerun up to
    --retries times and the quietest attempt kept."""
    rows = []
    for cell in args.cells:
        for mode in args.modes:
            for case in args.grid:
                row = None
                for attempt in range(1 + args.retries):
                    busy_row = (wait_for_idle(args.wait_idle, interval=0.5)
                                if args.wait_idle > 0 else None)
                    new = run_one(cell, mode, case, impl_names, sgemm, args)
                    new["cpu_busy_before"] = busy_row
                    new["attempts"] = attempt + 1
                    if row is None or _noise(new) < _noise(row):
                        row = new
                    if _noise(row) <= args.noisy_iqr:
                        break
                    if attempt < args.retries:
                        iqr = max([r["iqr_pct"] for r in new["impls"].values()
                                   if "iqr_pct" in r] or [0.0])
                        print(f"  (noisy row: iqr {iqr:.0f}%, other load "
                              f"{100 * (new.get('other_load') or 0):.0f}%; retrying)",
                              file=sys.stderr, flush=True)
                rows.append(row)
                print(format_row(row, impl_names), flush=True)
    return rows


def print_summary(rows: List[dict], impl_names: Sequence[str], sgemm: float,
                  elapsed: float) -> List[dict]:
    """What follows the table: the legend of the ratios, marked rows, rows where a peer beat
    CANDIDATE, mismatches and errors. Returns the mismatching rows."""
    marked = sum(1 for r in rows if (r.get("other_load") or 0) > OTHER_LOAD_LIMIT)
    ratio_doc = (f"ratio = {CANDIDATE} time / {BASELINE} time (< 1: {CANDIDATE} faster). "
                 if len(impl_names) == 2 else
                 "a/b = a's median time / b's median time (< 1: a faster). ")
    print(f"{ratio_doc}iqr% = worst interquartile range / median of the timed calls. "
          f"%sgemm relative to {sgemm:.1f} GFLOP/s. Timed section {elapsed:.0f}s.")
    if marked:
        print(f"{marked} row(s) were timed while other processes used > "
              f"{100 * OTHER_LOAD_LIMIT:.0f}% of the CPUs (marked); do not trust them.")
    peers_used = [n for n in impl_names if IMPLEMENTATIONS[n].peer]
    if CANDIDATE in impl_names and peers_used:
        beaten = [(r, n, v) for r in rows for n, v in r["ratio_vs_peers"].items()
                  if v is not None and v > 1.0]
        print()
        if beaten:
            print(f"Rows where a peer is faster than {CANDIDATE} ({CANDIDATE}/peer > 1; "
                  f"within ~1.1 is noise unless it repeats):")
            for r, n, v in beaten:
                c = r["case"]
                loaded = (r.get("other_load") or 0) > OTHER_LOAD_LIMIT
                print(f"  {r['cell']:4} {r['mode']:9} T={c['T']} B={c['B']} I={c['I']} "
                      f"H={c['H']} {r['tag']}: {n} {v:.2f}x faster"
                      + (" (loaded machine)" if loaded else ""))
        else:
            print(f"No row where a peer ({', '.join(peers_used)}) is faster than {CANDIDATE}.")

    mismatches = [r for r in rows if r["check"]["status"] == "mismatch"]
    errors = [(r, n) for r in rows for n, v in r["impls"].items() if v.get("error")]
    if mismatches:
        print()
        print("!" * 78)
        print(f"!! {len(mismatches)} CONFIG(S) WHERE OUTPUTS/GRADS DO NOT MATCH {BASELINE}:")
        for r in mismatches:
            c = r["case"]
            print(f"!!   {r['cell']} {r['mode']} T={c['T']} B={c['B']} I={c['I']} H={c['H']} "
                  f"{r['tag']}: {r['check'].get('summary', '')}")
        print("!" * 78)
    if errors:
        print(f"\n{len(errors)} implementation error(s); rerun with -v for tracebacks.")
    return mismatches


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    impl_names, notes, wanted = choose_implementations(args)
    if impl_names is None:
        return 2
    peer_versions = {n: IMPLEMENTATIONS[n].version() for n in impl_names
                     if IMPLEMENTATIONS[n].version}
    if not impl_names:
        print("no implementation available", file=sys.stderr)
        return 2

    busy = wait_for_idle(args.wait_idle) if args.wait_idle > 0 else cpu_busy_fraction(0.5)
    started = _dt.datetime.now()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    machine = machine_info()
    machine["cpu_busy_at_start"] = busy
    rf_info = rnnfast_info() if "rnnfast" in wanted else None
    print(f"rnnfast CPU benchmark  {started.isoformat(timespec='seconds')}")
    print(f"cpu: {machine['cpu_model']}  avx2={machine['avx2']} avx512f={machine['avx512f']}  "
          f"threads={threads}  torch {torch.__version__}  loadavg {machine['loadavg_start']}")
    if rf_info is not None:
        print(f"rnnfast: {rf_info}")
    for note in notes:
        print("NOTE: " + note)
    if busy is not None and busy > 0.15:
        print(f"WARNING: {100 * busy:.0f}% of the CPUs were busy with other work at start; with "
              f"{threads} threads on {os.cpu_count()} CPUs, timings will be slow and noisy "
              f"(use --wait-idle SECONDS, or --threads 1).")

    gemm = "SGEMM" if args.dtype == "float32" else "DGEMM"
    sg0 = sgemm_rate(seconds=0.3 if args.quick else 1.0, dtype=args.torch_dtype)
    print(f"{gemm} (torch.mm 1024x1024 {args.dtype}): {sg0['gflops']:.1f} GFLOP/s "
          f"(best of {len(sg0['window_medians'])} window medians "
          f"{', '.join(f'{m:.0f}' for m in sg0['window_medians'])}; max {sg0['max_gflops']:.0f})")
    sgemm = sg0["gflops"]
    print(f"grid: {len(args.grid)} configs x cells {args.cells} x modes {args.modes}, "
          f"{args.dtype}; "
          f"budget {args.budget}s/config, reps in [{args.min_reps}, {args.max_reps}]")
    print()
    legend = format_legend(impl_names)
    if legend:
        print(legend)
    print(format_header(impl_names))

    t_all = time.perf_counter()
    rows = run_grid(args, impl_names, sgemm)
    elapsed = time.perf_counter() - t_all

    if args.wait_idle > 0:
        wait_for_idle(args.wait_idle, interval=0.5)
    sg1 = sgemm_rate(seconds=0.3 if args.quick else 1.0, dtype=args.torch_dtype)
    print()
    load_end = loadavg()
    machine["loadavg_end"] = load_end
    print(f"{gemm} at end: {sg1['gflops']:.1f} GFLOP/s (start {sg0['gflops']:.1f}); "
          f"loadavg {load_end}")
    drift = sg1["gflops"] / sg0["gflops"] if sg0["gflops"] else 1.0
    if not 0.8 <= drift <= 1.25 or (load_end and load_end[0] > threads + 0.5):
        print(f"WARNING: machine load changed or is high during the run ({gemm} end/start "
              f"{drift:.2f}, loadavg {load_end}). Rows timed while other processes used the "
              f"CPUs are marked; unmarked rows were timed on a quiet machine.")
    # Other load can only lower a SGEMM measurement, so the higher of start/end is the better
    # estimate of the machine's rate. If it is clearly higher than the start value the streamed
    # table used, recompute %sgemm and print the table again.
    sgemm_best = max(sg0["gflops"], sg1["gflops"])
    if sgemm_best > 1.05 * sgemm:
        for row in rows:
            for r in row["impls"].values():
                if r.get("gflops") is not None:
                    r["pct_sgemm"] = 100.0 * r["gflops"] / sgemm_best
        print(f"\n{gemm} at end was higher than at start; the table again with %sgemm relative to "
              f"{sgemm_best:.1f} GFLOP/s:\n")
        if legend:
            print(legend)
        print(format_header(impl_names))
        for row in rows:
            print(format_row(row, impl_names))
        print()
    sgemm = sgemm_best
    mismatches = print_summary(rows, impl_names, sgemm, elapsed)

    result = {
        "schema": "rnnfast-bench-cpu/1",
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "machine": machine,
        "rnnfast": rf_info,
        "threads": threads,
        "implementations": impl_names,
        "baseline": BASELINE,
        "candidate": CANDIDATE,
        "peers": {n: {"version": peer_versions.get(n)} for n in impl_names
                  if IMPLEMENTATIONS[n].peer},
        "package_versions": package_versions(),
        "ratios": {"ratio": f"<impl> median / {BASELINE} median",
                   "ratio_vs_peers": f"{CANDIDATE} median / <peer> median"},
        "settings": {"quick": args.quick, "budget_s": args.budget, "warmup_s": args.warmup,
                     "min_reps": args.min_reps, "max_reps": args.max_reps, "seed": args.seed,
                     "retries": args.retries, "noisy_iqr_pct": args.noisy_iqr,
                     "wait_idle_s": args.wait_idle,
                     "dtype": args.dtype, "out_atol": TOLERANCES[args.torch_dtype][0],
                     "grad_rtol": TOLERANCES[args.torch_dtype][1],
                     "grad_atol": TOLERANCES[args.torch_dtype][2],
                     "flops": "forward 2*steps*G*H*(I_l+H) per layer/direction; training 3x"},
        "sgemm": {"start": sg0, "end": sg1, "used_gflops": sgemm},
        "elapsed_s": elapsed,
        "results": rows,
    }
    kind = "cpu" if args.dtype == "float32" else "cpu-f64"   # the files' names
    if not args.no_json or not args.no_png:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_json:
        jpath = args.out_dir / f"{kind}-{stamp}.json"
        write_json(jpath, result)
        print(f"wrote {jpath}")
    if not args.no_png:
        ppath = args.out_dir / f"{kind}-{stamp}.png"
        title = (f"rnnfast CPU benchmark {started:%Y-%m-%d %H:%M}, {machine['cpu_model']}, "
                 f"{threads} threads, torch {torch.__version__}"
                 + (f", {args.dtype}" if args.dtype != "float32" else "")
                 + ("\n" + ", ".join(f"{n} {v}" for n, v in peer_versions.items() if v)
                    if any(peer_versions.values()) else ""))
        note = write_png(rows, impl_names, ppath, title)
        print(f"note: {note}" if note else f"wrote {ppath}")
    return 1 if (mismatches and not args.allow_mismatch) else 0


if __name__ == "__main__":
    sys.exit(main())
