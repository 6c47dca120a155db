"""`python -m serve`: the same command as `talos-pipeline serve` (see `serve/command.py`)."""

import sys

from .command import main

sys.exit(main())
