"""``python -m talos_pipeline.simulator``: see `command.py`."""

from .command import add_arguments, main, parse_size, run  # noqa: F401 (callers not yet moved to command.py)

if __name__ == "__main__":
    raise SystemExit(main())
