"""Correctness before timing: one runner's outputs (and, in training, gradients) against
another's on the same input, with the tolerances below."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

OUT_ATOL = 1e-4          # outputs / final states: allclose(atol=1e-4), as torch's own fp32 noise
GRAD_RTOL = 1e-4         # gradients: max|a-b| <= GRAD_ATOL + GRAD_RTOL * max|ref| (norm-wise,
GRAD_ATOL = 1e-4         # since weight grads sum over T*B terms and grow with the config)
# float64 rows (--dtype float64): the same checks, tighter; two float64 computations of these
# sizes agree to about 1e-13
TOLERANCES = {torch.float32: (OUT_ATOL, GRAD_RTOL, GRAD_ATOL),
              torch.float64: (1e-10, 1e-10, 1e-10)}


def _maxdiff(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> float:
    if a is None and b is None:
        return 0.0
    if a is None or b is None or a.shape != b.shape:
        return math.inf
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


def check(cand, ref, inputs, mode: str) -> Tuple[bool, dict]:
    """Compare runner cand against runner ref (harness.runners.Runner) on the inputs: `infer`
    outputs, and in training mode the gradients `grads()` returns after `train`.
    Returns (ok, details: the max difference per output, the worst gradient's name and its
    error as a multiple of the tolerance)."""
    details: dict = {}
    ok = True
    co, ch, cc = cand.infer(inputs)
    ro, rh, rc = ref.infer(inputs)
    out_atol, grad_rtol, grad_atol = TOLERANCES[ro.dtype]
    details["out_atol"] = out_atol
    for name, a, b in (("out", co, ro), ("h_n", ch, rh), ("c_n", cc, rc)):
        d = _maxdiff(a, b)
        details[name] = d
        if a is not None and b is not None and a.dtype != b.dtype:
            ok = False
            details[f"{name}_dtype"] = f"{a.dtype} against {b.dtype}"
        if not d <= out_atol:
            ok = False
    if mode == "training":
        cand.train(inputs)
        cg = {k: v.clone() for k, v in cand.grads().items()}
        ref.train(inputs)
        rg = ref.grads()
        worst, worst_name = 0.0, None
        for k in sorted(set(cg) | set(rg)):
            a, b = cg.get(k), rg.get(k)
            d = _maxdiff(a, b)
            scale = float(b.abs().max()) if b is not None and b.numel() else 0.0
            rel = d / (grad_atol + grad_rtol * scale)
            if not rel <= 1.0:
                ok = False
            if not rel <= worst:
                worst, worst_name = rel, k
        details["grad_worst"] = worst_name
        details["grad_err_over_tol"] = worst
    return ok, details


def describe_mismatch(details: dict) -> str:
    atol = details.get("out_atol", OUT_ATOL)
    parts = [f"{k}={v:.2g}" for k, v in details.items()
             if k in ("out", "h_n", "c_n") and not v <= atol]
    parts += [f"{k}: {v}" for k, v in details.items() if k.endswith("_dtype")]
    if details.get("grad_err_over_tol", 0) > 1:
        parts.append(f"grad[{details['grad_worst']}]={details['grad_err_over_tol']:.2g}xtol")
    return " ".join(parts)

