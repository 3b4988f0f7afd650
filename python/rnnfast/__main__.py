"""Command line: ``python -m rnnfast demo [...]`` and ``python -m rnnfast sample --load DIR``.

See :mod:`rnnfast.demo` (or ``python -m rnnfast demo --help``).
"""
import sys

from .demo import main

if __name__ == "__main__":
    sys.exit(main())
