"""Command line: ``python -m rnnfast demo [...]`` and ``python -m rnnfast sample --load DIR``.

See :mod:`rnnfast.lm.demo` (or ``python -m rnnfast demo --help``).
"""
import sys

if __name__ == "__main__":
    from .lm.demo import main

    sys.exit(main())
