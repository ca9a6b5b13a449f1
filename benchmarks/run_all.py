"""Run every benchmark script and write one markdown report: ``python benchmarks/run_all.py [options]``.

The same as ``saddle bench`` (see ``saddle bench --help``): quick settings
unless ``--full``, ``--device cuda`` on a GPU machine, ``--only NAME`` for
one script, ``-o`` for the report's path.
"""

import sys
from pathlib import Path

from saddle.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--folder", str(Path(__file__).resolve().parent), *sys.argv[1:]]))
