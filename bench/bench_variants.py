#!/usr/bin/env python
"""Variant benchmark: rnnfast's LSTM/GRU options (coupled gates, peepholes, weight drop, zoneout,
layer normalisation) against
the plain cell on rnnfast, and against the same variant written the way users write it today.

Two questions per (config, mode, variant), from the issue that asked for the options:

- What does the option cost on rnnfast? The variant's time / the plain cell's time, both rnnfast,
  same shape. Targets: peephole, coupled gates and zoneout within 1.10x, layer norm within 1.35x.
- What does rnnfast save over what users do without it? The baseline's time / rnnfast's time,
  where the baseline is the variant as a Python loop over time steps (torch.nn.LSTMCell for the
  plain cell, a hand-written cell in F.linear / torch.sigmoid / torch.tanh (/ F.layer_norm)
  for peepholes, coupled gates and layer normalisation, torch.nn.LSTMCell / GRUCell with the zoneout blend in Python for zoneout) or,
  for weight drop, torch.nn.LSTM / GRU called through
  torch.func.functional_call with weight_hh_l0 replaced by F.dropout(weight_hh_l0, p) (the
  AWD-LSTM WeightDrop way). Target: at least 5x at the grid's small configs (I, H <= 128) for the
  loop baselines.

Every baseline (harness/variant_runners.py) holds the rnnfast module's parameters and is
checked against it once per config (outputs, and in training rows the gradients of the input
and every parameter, with harness/checks.py's tolerances; in eval mode, so weight drop is off
and zoneout is its expectation, both deterministic) before anything is timed; a baseline that
disagrees is not timed and the script exits 1. All implementations of a (config, mode) are then
timed in the same process in interleaved rounds (every runner once per round, the order rotated
each round), and medians are reported, as in bench_cpu.py.

    python bench/bench_variants.py --quick            # tiny grid, a smoke run of seconds
    python bench/bench_variants.py                    # default grid, a few minutes
    python bench/bench_variants.py --config 100,32,128,128 --modes training --threads 1
    python bench/bench_variants.py --variants lstm_peephole,gru_weight_drop
    python bench/bench_variants.py --variants lstm_zoneout,gru_zoneout

See bench/README.md ("Variants") for the columns and the method.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from harness.checks import GRAD_ATOL, GRAD_RTOL, OUT_ATOL, check, describe_mismatch  # noqa: E402
from harness.load import OTHER_LOAD_LIMIT, cpu_busy_fraction  # noqa: E402
from harness.machine import import_rnnfast, machine_info, rnnfast_info  # noqa: E402
from harness.report import Column, join_cells, num, write_json  # noqa: E402
from harness.runners import Inputs  # noqa: E402
from harness.timing import (add_timing_args, fill_timing_defaults, sgemm_rate,  # noqa: E402
                            summarize, time_interleaved)
from harness.variant_runners import (MaskDrawRunner, RnnfastRunner,  # noqa: E402
                                     VariantRunner, baseline_for, options_on)

MODES = ("training", "inference")

# --------------------------------------------------------------------------------------------
# Variants and targets (data, so a new option is one line here plus, if it has one, a baseline
# in harness/variant_runners.py's baseline_for)
# --------------------------------------------------------------------------------------------

# name -> (rnnfast module class name, keyword arguments). The entry of a class with no keyword
# arguments is that class's plain cell, the reference of the class's variants' ratios.
VARIANTS: Dict[str, Tuple[str, dict]] = {
    "lstm": ("LSTM", {}),
    "lstm_coupled": ("LSTM", {"coupled_gates": True}),
    "lstm_peephole": ("LSTM", {"peephole": True}),
    "lstm_coupled_peephole": ("LSTM", {"coupled_gates": True, "peephole": True}),
    "lstm_weight_drop": ("LSTM", {"weight_drop": 0.3}),
    "lstm_zoneout": ("LSTM", {"zoneout": 0.1}),
    "lstm_layer_norm": ("LSTM", {"layer_norm": True}),
    "gru": ("GRU", {}),
    "gru_weight_drop": ("GRU", {"weight_drop": 0.3}),
    "gru_zoneout": ("GRU", {"zoneout": 0.1}),
    "gru_layer_norm": ("GRU", {"layer_norm": True}),
}

# Target of variant time / plain time per option, from the issue. A variant's target is the
# largest of its options' targets; a variant with an option not listed here (weight_drop: the
# issue names none) has none.
RATIO_TARGETS = {"coupled_gates": 1.10, "peephole": 1.10, "zoneout": 1.10, "layer_norm": 1.35}

# Target of baseline time / rnnfast time, for Python-loop baselines of a variant, at small configs.
SPEEDUP_TARGET = 5.0

# Options that do nothing in eval mode: a variant whose options are all here is skipped in
# inference rows (it would time the plain cell again). Not zoneout: eval blends with p (the
# expectation), so its inference rows time real work.
TRAIN_ONLY_OPTIONS = {"weight_drop"}


def plain_of(cls_name: str) -> Optional[str]:
    """The name of the class's plain cell in VARIANTS."""
    return next((n for n, (c, kw) in VARIANTS.items() if c == cls_name and not options_on(kw)),
                None)


def ratio_target(kwargs: dict) -> Optional[float]:
    opts = options_on(kwargs)
    if not opts or any(k not in RATIO_TARGETS for k in opts):
        return None
    return max(RATIO_TARGETS[k] for k in opts)


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Config:
    """One shape: sequence length, batch, input size, hidden size; 1 layer, unidirectional,
    float32, time-major, zero initial state."""

    T: int
    B: int
    I: int
    H: int

    @property
    def small(self) -> bool:
        """Where the issue's 5x target applies."""
        return self.I <= 128 and self.H <= 128

    @property
    def label(self) -> str:
        return f"{self.T},{self.B},{self.I},{self.H}"


DEFAULT_GRID = [Config(50, 16, 64, 64), Config(100, 32, 128, 128), Config(50, 8, 256, 256),
                Config(200, 4, 128, 128), Config(25, 64, 128, 128)]
# One config: a --quick run times up to 18 runners per mode (training; 14 in inference, where
# weight drop is skipped), and on a loaded 2-core machine (OpenMP threads waiting for a core) each
# call can take 10-100x its quiet time.
QUICK_GRID = [Config(10, 3, 16, 24)]


def parse_config(text: str) -> Config:
    try:
        T, B, I, H = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--config wants T,B,I,H (four integers), got {text!r}")
    if min(T, B, I, H) <= 0:
        raise argparse.ArgumentTypeError(f"--config sizes must be positive, got {text!r}")
    return Config(T, B, I, H)


# --------------------------------------------------------------------------------------------
# One (config, mode): build, check, time
# --------------------------------------------------------------------------------------------

def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


@contextlib.contextmanager
def _as_dtype(runners, dtype):
    """The runners' parameters in `dtype` for the block (None: unchanged), then back, with no
    gradients left."""
    params = [p for r in runners for p in r.params.values()] if dtype is not None else []
    was = [p.dtype for p in params]
    try:
        for p in params:
            p.data = p.data.to(dtype)
        yield
    finally:
        for p, d in zip(params, was):
            p.data = p.data.to(d)
            p.grad = None


def run_config(cfg: Config, mode: str, names: List[str], args, rf) -> List[dict]:
    """Rows of every variant in `names` for one config and mode, all timed in the same
    interleaved rounds."""
    g = torch.Generator().manual_seed(args.seed + 1)
    inputs = Inputs(x=torch.randn(cfg.T, cfg.B, cfg.I, generator=g).requires_grad_(True))
    rows: List[dict] = []
    runners: Dict[str, VariantRunner] = {}
    for name in names:
        cls_name, kwargs = VARIANTS[name]
        opts = options_on(kwargs)
        row = {"config": dataclasses.asdict(cfg), "small": cfg.small, "mode": mode,
               "variant": name, "module": cls_name, "kwargs": kwargs,
               "plain": plain_of(cls_name), "ratio_target": ratio_target(kwargs),
               "rnnfast": {}, "baseline": {}, "check": {"status": "no baseline"}}
        if mode == "inference" and opts and set(opts) <= TRAIN_ONLY_OPTIONS:
            continue   # eval mode turns the option off: the plain cell's row already times it
        rows.append(row)
        try:
            torch.manual_seed(args.seed)
            module = getattr(rf, cls_name)(cfg.I, cfg.H, **kwargs)
        except Exception as e:  # noqa: BLE001  (e.g. an option this build does not have yet)
            row["rnnfast"] = {"error": f"build: {_err(e)}"}
            row["check"]["status"] = "error"
            continue
        ours = runners[f"rnnfast:{name}"] = RnnfastRunner(module)
        if mode == "training" and "zoneout" in opts:
            runners[f"maskdraw:{name}"] = MaskDrawRunner(module)
        factory = baseline_for(cls_name, kwargs)
        if factory is None:
            continue
        try:
            base = factory(module)
        except Exception as e:  # noqa: BLE001
            row["baseline"] = {"error": f"build: {_err(e)}"}
            row["check"]["status"] = "error"
            continue
        row["baseline"] = {"kind": base.kind, "loop": base.is_loop}
        # Same parameters, same input: the two must compute the same thing before their times
        # mean anything. Checked in eval mode, where weight drop is off (its masks are random).
        ours.set_training(False)
        base.set_training(False)
        # Layer-normalised LSTMs at this init are chaotic in float32: rounding differences
        # double every ~10 steps (rnnfast's and the plain-torch loop's outputs both miss their
        # float64 values by 0.02-0.09 at T = 200), so those two are checked in float64, where
        # they agree to ~1e-10.
        check_dtype = torch.float64 if opts.get("layer_norm") else None
        try:
            with _as_dtype((ours, base), check_dtype):
                check_inputs = inputs if check_dtype is None else Inputs(
                    x=inputs.x.detach().to(check_dtype).requires_grad_(True))
                ok, details = check(ours, base, check_inputs, mode)
        except Exception as e:  # noqa: BLE001
            row["baseline"]["error"] = f"check: {_err(e)}"
            row["check"]["status"] = "error"
            continue
        row["check"] = {"status": "ok" if ok else "mismatch", "details": details}
        if ok:
            runners[f"baseline:{name}"] = base
        else:
            row["check"]["summary"] = describe_mismatch(details)

    for r in runners.values():
        r.set_training(mode == "training")
    samples, other = {}, None
    if runners:
        # The budget is per row, so every row gets about the same time whatever the grid.
        samples, other = time_interleaved(
            runners, mode, inputs, budget=args.budget * len(rows), warmup=args.warmup,
            min_reps=args.min_reps, max_reps=args.max_reps, block=args.block_ms / 1e3)
    medians = {}
    for key, ts in samples.items():
        medians[key] = summarize(ts)
    for row in rows:
        row["other_load"] = other
        name = row["variant"]
        if f"rnnfast:{name}" in medians:
            row["rnnfast"] = medians[f"rnnfast:{name}"]
        if f"baseline:{name}" in medians:
            row["baseline"].update(medians[f"baseline:{name}"])
        t = row["rnnfast"].get("median_ms")
        t_plain = medians.get(f"rnnfast:{row['plain']}", {}).get("median_ms")
        t_base = row["baseline"].get("median_ms")
        row["ratio_vs_plain"] = t / t_plain if t and t_plain else None
        if f"maskdraw:{name}" in medians:  # zoneout in training: the draw's share
            t_draw = medians[f"maskdraw:{name}"]["median_ms"]
            row["mask_draw_ms"] = t_draw
            row["ratio_vs_plain_without_draw"] = (t - t_draw) / t_plain if t and t_plain else None
        row["speedup"] = t_base / t if t and t_base else None
        row["speedup_target"] = (SPEEDUP_TARGET if row["baseline"].get("loop") and cfg.small
                                 and options_on(row["kwargs"]) else None)
        row["ratio_ok"] = (row["ratio_vs_plain"] <= row["ratio_target"]
                           if row["ratio_target"] and row["ratio_vs_plain"] else None)
        row["speedup_ok"] = (row["speedup"] >= row["speedup_target"]
                             if row["speedup_target"] and row["speedup"] else None)
    return rows


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

def _verdict(ok: Optional[bool], target: Optional[float], fmt: str) -> str:
    if target is None:
        return "-"
    return fmt.format(target) + (" ok" if ok else " MISS" if ok is not None else " n/a")


COLUMNS: List[Column] = [
    ("T,B,I,H", -14, lambda r: r["config_label"] + ("" if r["small"] else " (L)")),
    ("mode", -9, lambda r: r["mode"]),
    ("variant", -22, lambda r: r["variant"]),
    ("rnnfast ms", 10, lambda r: num(r["rnnfast"].get("median_ms"), ".3f")),
    ("/plain", 7, lambda r: num(r["ratio_vs_plain"], ".3f")),
    ("target", 11, lambda r: _verdict(r["ratio_ok"], r["ratio_target"], "<={:.2f}")),
    ("baseline", -21, lambda r: r["baseline"].get("kind", "none")),
    ("base ms", 9, lambda r: num(r["baseline"].get("median_ms"), ".2f")),
    ("speedup", 8, lambda r: num(r["speedup"], ".1f") + ("x" if r["speedup"] else "")),
    ("target", 9, lambda r: _verdict(r["speedup_ok"], r["speedup_target"], ">={:.0f}x")),
    ("iqr%", 5, lambda r: num(max([d["iqr_pct"] for d in (r["rnnfast"], r["baseline"])
                                   if "iqr_pct" in d] or [math.nan]), ".0f")),
    ("check", -6, lambda r: _check_text(r)),
]


def _check_text(row: dict) -> str:
    c = row["check"]
    text = {"ok": "ok", "mismatch": "!! MISMATCH " + c.get("summary", ""),
            "error": "ERR", "no baseline": "-"}.get(c["status"], c["status"])
    other = row.get("other_load")
    if other is not None and other > OTHER_LOAD_LIMIT:
        text += f" (other processes used {100 * other:.0f}% of the CPUs)"
    return text


def format_header() -> str:
    return join_cells([h for h, _, _ in COLUMNS], COLUMNS, "  ")


def format_row(row: dict) -> str:
    row = dict(row, config_label=Config(**row["config"]).label)
    text = join_cells([f(row) for _, _, f in COLUMNS], COLUMNS, "  ")
    errors = [f"{side}: {d['error']}" for side, d in (("rnnfast", row["rnnfast"]),
                                                      ("baseline", row["baseline"]))
              if "error" in d]
    return text + "".join(f"\n    {e}" for e in errors)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny grid, short budget: a smoke run of seconds")
    p.add_argument("--config", action="append", type=parse_config, default=None,
                   metavar="T,B,I,H", help="replace the grid (repeatable)")
    p.add_argument("--modes", default=",".join(MODES), help="comma list of training,inference")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma list from {list(VARIANTS)}; each class's plain cell is always "
                        f"added (the ratios need it)")
    add_timing_args(p, per="row", quick_budget=0.1, quick_max_reps=20)
    p.add_argument("--block-ms", type=float, default=0.0,
                   help="time blocks of back-to-back calls of about this many ms of the "
                        "slowest implementation per sample (a training loop's steady state); "
                        "default 0: one call per sample, each after another implementation's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=HERE / "results",
                   help="where variants-<timestamp>.json goes (default bench/results)")
    p.add_argument("--no-json", action="store_true", help="do not write JSON")
    a = p.parse_args(argv)
    fill_timing_defaults(a)
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    for m in a.modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}; choose from {MODES}")
    wanted = [v.strip() for v in a.variants.split(",") if v.strip()]
    for v in wanted:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; choose from {list(VARIANTS)}")
    plains = [plain_of(VARIANTS[v][0]) for v in wanted]
    # VARIANTS order, plain cells included
    a.variants = [v for v in VARIANTS if v in wanted or v in plains]
    a.grid = a.config or (QUICK_GRID if a.quick else DEFAULT_GRID)
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    rf = import_rnnfast()
    if rf is None:
        print(f"rnnfast cannot be imported: {rnnfast_info().get('error')}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    busy = cpu_busy_fraction(0.5)
    started = _dt.datetime.now()
    machine = machine_info()
    machine["cpu_busy_at_start"] = busy
    rf_info = rnnfast_info()
    print(f"rnnfast variant benchmark  {started.isoformat(timespec='seconds')}")
    print(f"cpu: {machine['cpu_model']}  threads={threads}  torch {torch.__version__}  "
          f"loadavg {machine['loadavg_start']}")
    print(f"rnnfast {rf_info.get('version')} simd={rf_info.get('simd')} "
          f"threads={rf_info.get('threads')}  ({rf_info.get('file')})")
    if busy is not None and busy > 0.15:
        print(f"WARNING: {100 * busy:.0f}% of the CPUs were busy with other work at start; "
              f"timings will be slow and noisy.")
    sg = sgemm_rate(seconds=0.3 if args.quick else 1.0)
    print(f"SGEMM (torch.mm 1024x1024 fp32): {sg['gflops']:.1f} GFLOP/s")
    print(f"grid: {len(args.grid)} configs x modes {args.modes} x variants {args.variants}; "
          f"budget {args.budget}s/row, reps in [{args.min_reps}, {args.max_reps}]")
    print("/plain: rnnfast variant / rnnfast plain cell, same shape (< target: ok). speedup: "
          "baseline / rnnfast (the 5x target: loop baselines of variants at small configs; "
          "(L) marks a config with I or H > 128). Weight-drop rows are training only.")
    print()
    print(format_header())

    rows: List[dict] = []
    t0 = time.perf_counter()
    for cfg in args.grid:
        for mode in args.modes:
            new = run_config(cfg, mode, args.variants, args, rf)
            for row in new:
                print(format_row(row), flush=True)
            rows += new
    elapsed = time.perf_counter() - t0
    print(f"\n{len(rows)} rows in {elapsed:.0f} s")

    draws = [r for r in rows if r.get("mask_draw_ms") is not None]
    if draws:
        print("\nzoneout in training: the masks' draw (rnnfast.ops.keep_mask; timed in the same "
              "rounds) and /plain without it:")
        for r in draws:
            without = r.get("ratio_vs_plain_without_draw")
            print(f"  {Config(**r['config']).label:<16} {r['variant']:<14} draw "
                  f"{r['mask_draw_ms']:.3f} ms of {r['rnnfast']['median_ms']:.3f} ms; "
                  f"/plain without the draw {num(without, '.3f')}")
    print()
    for r in rows:   # targets are reported, not enforced (the exit status ignores them)
        missed = []
        if r["ratio_ok"] is False:
            missed.append(f"/plain {r['ratio_vs_plain']:.3f} > {r['ratio_target']:.2f}")
        if r["speedup_ok"] is False:
            missed.append(f"speedup {r['speedup']:.1f}x < {r['speedup_target']:.0f}x")
        if missed:
            print(f"target missed: {Config(**r['config']).label} {r['mode']} {r['variant']}: "
                  + ", ".join(missed))
    bad = [r for r in rows if r["check"]["status"] in ("mismatch", "error")]
    for r in bad:
        why = [r["check"].get("summary"), r["rnnfast"].get("error"), r["baseline"].get("error")]
        print(f"!! {Config(**r['config']).label} {r['mode']} {r['variant']}: "
              f"{r['check']['status']}: " + "; ".join(w for w in why if w), file=sys.stderr)

    if not args.no_json:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        path = args.out_dir / f"variants-{started.strftime('%Y%m%d-%H%M%S')}.json"
        data = {
            "script": "bench/bench_variants.py", "started": started.isoformat(),
            "elapsed_s": elapsed, "machine": machine, "rnnfast": rf_info, "threads": threads,
            "sgemm": sg,
            "settings": {"budget_s_per_row": args.budget, "warmup_s": args.warmup,
                         "block_ms": args.block_ms,
                         "min_reps": args.min_reps, "max_reps": args.max_reps,
                         "seed": args.seed, "modes": args.modes,
                         "grid": [dataclasses.asdict(c) for c in args.grid],
                         "out_atol": OUT_ATOL, "grad_atol": GRAD_ATOL, "grad_rtol": GRAD_RTOL},
            "variants": {n: {"module": VARIANTS[n][0], "kwargs": VARIANTS[n][1]}
                         for n in args.variants},
            "targets": {"ratio": RATIO_TARGETS, "speedup": SPEEDUP_TARGET,
                        "speedup_applies": "loop baselines of variants, configs with I, H <= 128"},
            "results": rows,
        }
        write_json(path, data)
        print(f"wrote {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
