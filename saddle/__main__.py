"""``python -m saddle``: the same as the ``saddle`` command."""

import sys

from .cli import main

sys.exit(main())
