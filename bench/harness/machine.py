"""What a results file records about where it ran: the machine (CPU model and flags, torch,
threads) and rnnfast (where it was imported from, rnnfast.info()); and importing rnnfast,
installed or from the tree's python/ directory."""

from __future__ import annotations

import importlib
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

from .load import loadavg

REPO = Path(__file__).resolve().parents[2]
TREE = REPO / "python"    # where setup.py build_ext --inplace puts the built package

_rnnfast_mod = None
_rnnfast_err: Optional[str] = None


def import_rnnfast(prefer_tree: bool = False):
    """Import rnnfast, or return None (the reason: rnnfast_error()). By default whatever
    `import rnnfast` finds (installed, or PYTHONPATH) and, if that fails, the tree's python/
    directory (appended, so an explicit PYTHONPATH still wins). With prefer_tree, python/ goes
    first on sys.path, ahead of PYTHONPATH and an installed rnnfast."""
    global _rnnfast_mod, _rnnfast_err
    if _rnnfast_mod is not None or _rnnfast_err is not None:
        return _rnnfast_mod
    local = str(TREE)
    if prefer_tree and (TREE / "rnnfast").is_dir() and local not in sys.path:
        sys.path.insert(0, local)
    try:
        rnnfast = importlib.import_module("rnnfast")
    except ImportError:
        if local not in sys.path and (TREE / "rnnfast").is_dir():
            sys.path.append(local)
        try:
            rnnfast = importlib.import_module("rnnfast")
        except Exception as e:  # noqa: BLE001
            _rnnfast_err = f"{type(e).__name__}: {e}"
            return None
    except Exception as e:  # noqa: BLE001  (a half-built package may raise anything)
        _rnnfast_err = f"{type(e).__name__}: {e}"
        return None
    missing = [n for n in ("LSTM", "GRU", "RNN") if not hasattr(rnnfast, n)]
    if missing:   # e.g. an empty python/rnnfast/ imported as a namespace package
        where = getattr(rnnfast, "__file__", None) or list(getattr(rnnfast, "__path__", []))
        _rnnfast_err = f"rnnfast imported from {where} lacks {missing} (not built yet?)"
        return None
    _rnnfast_mod = rnnfast
    return rnnfast


def rnnfast_error() -> Optional[str]:
    """Why import_rnnfast() returned None (None before it was called or when it succeeded)."""
    return _rnnfast_err


def source_commit(path: Optional[str]) -> Optional[str]:
    """The git commit of the checkout holding `path` (+ "-dirty" when tracked files differ
    from it), or None outside a git checkout: which code a results file timed."""
    if not path:
        return None
    cwd = os.path.dirname(os.path.abspath(path))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd,
                              capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.strip() else "")


def rnnfast_info() -> dict:
    rf = import_rnnfast()
    if rf is None:
        return {"error": _rnnfast_err}
    d: dict = {"file": getattr(rf, "__file__", None)}
    d["commit"] = source_commit(d["file"])
    try:
        d.update(rf.info())
    except Exception as e:  # noqa: BLE001
        d["info_error"] = f"{type(e).__name__}: {e}"
    return d


def machine_info() -> dict:
    info: dict = {"hostname": platform.node(), "platform": platform.platform(),
                  "python": platform.python_version(), "torch_version": torch.__version__,
                  "torch_num_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    model, flags = None, set()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "Model name" and model is None:
                model = val.strip()
            elif key.strip() == "Flags":
                flags = set(val.split())
    except (OSError, subprocess.SubprocessError):
        pass
    if not flags:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    break
                if line.startswith("model name") and model is None:
                    model = line.partition(":")[2].strip()
        except OSError:
            pass
    info["cpu_model"] = model or platform.processor() or "unknown"
    info["loadavg_start"] = loadavg()
    info["avx2"] = "avx2" in flags
    info["fma"] = "fma" in flags
    info["avx512f"] = "avx512f" in flags
    try:
        info["torch_mkldnn"] = bool(torch.backends.mkldnn.is_available())
        info["torch_parallel_info"] = torch.__config__.parallel_info()
    except Exception:  # noqa: BLE001
        pass
    return info
