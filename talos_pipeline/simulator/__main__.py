"""``python -m talos_pipeline.simulator``: see `command.py`."""

from .command import main

if __name__ == "__main__":
    raise SystemExit(main())
