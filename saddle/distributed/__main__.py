"""``python -m saddle.distributed``: the torchrun entry point (`saddle.distributed.cli.main`)."""

import sys

from .cli import main

sys.exit(main())
