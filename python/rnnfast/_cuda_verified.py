"""Whether a run on a real GPU verified the CUDA sources this extension was built from.

The build records the sha256 of the sources its CUDA path is compiled from
(scripts/cuda_sources_hash.py says which) as ``_C.cuda_sources_sha``. The manifest
cuda_verified.json, shipped beside this module, lists the hashes of the source sets that
passed bench/gpu_check.sh on a GPU. The CUDA kernels count as verified exactly when the
built hash is listed: any change to those sources makes them unverified until a GPU run
adds the new hash.
"""
from __future__ import annotations

import json
import os
import re

from . import _C

MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_verified.json")
ENTRY_KEYS = ("sha", "date", "card", "commit", "results")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def load_manifest(path: str = MANIFEST) -> list[dict]:
    """The entries of the manifest at `path`, each with the keys ENTRY_KEYS (strings; sha
    is 64 lowercase hex digits). Raises RuntimeError if the file is missing or malformed."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise RuntimeError(f"rnnfast: cannot read the manifest of GPU-verified CUDA sources "
                           f"{path}: {e}") from e
    entries = data.get("verified") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise RuntimeError(f"rnnfast: {path} must be a JSON object with a list 'verified', "
                           f"got {type(data).__name__}")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or sorted(entry) != sorted(ENTRY_KEYS):
            raise RuntimeError(f"rnnfast: {path}: entry {i} must have exactly the keys "
                               f"{', '.join(ENTRY_KEYS)}, got {entry!r}")
        if not all(isinstance(entry[k], str) for k in ENTRY_KEYS):
            raise RuntimeError(f"rnnfast: {path}: entry {i} must hold strings, got {entry!r}")
        if not _SHA256.fullmatch(entry["sha"]):
            raise RuntimeError(f"rnnfast: {path}: entry {i}: sha must be 64 lowercase hex "
                               f"digits, got {entry['sha']!r}")
    return entries


def built_sources_sha() -> str | None:
    """The hash of the CUDA sources this extension was built from; None without CUDA."""
    return getattr(_C, "cuda_sources_sha", None) if _C.cuda_built else None


def is_verified(sha: str | None, entries: list[dict]) -> bool:
    """Whether `sha` is the hash of a verified source set."""
    return sha is not None and any(entry["sha"] == sha for entry in entries)


def cuda_kernels_verified() -> bool:
    """Whether this build's CUDA kernels are a GPU-verified source set (False without CUDA;
    the manifest is read only for a CUDA build)."""
    sha = built_sources_sha()
    return sha is not None and is_verified(sha, load_manifest())
