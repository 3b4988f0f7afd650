"""Text-table and results-file helpers shared by the scripts."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

# (header, width, cell text from a row); the cell is left-aligned when the width is negative
Column = Tuple[str, int, Callable[[dict], str]]


def num(v: Optional[float], spec: str) -> str:
    """format(v, spec), or 'n/a' for None and non-finite values."""
    if v is None or not math.isfinite(v):
        return "n/a"
    return format(v, spec)


def join_cells(texts: Sequence[str], columns: Sequence[Column], sep: str = " ") -> str:
    """One table line: each text padded to its column's width (left-aligned for a negative
    width, right-aligned otherwise), trailing blanks removed."""
    return sep.join(t.ljust(-w) if w < 0 else t.rjust(w)
                    for t, (_, w, _f) in zip(texts, columns)).rstrip()


def write_json(path: Path, data: dict) -> None:
    """A results file: indent 1, anything JSON lacks (paths, dtypes) as its str()."""
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
