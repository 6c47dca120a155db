"""What every command shares: how it prints, and what its exit codes mean."""

import sys

EXIT_OK = 0
EXIT_FAILED = 1
"""Upstream, store, signing or verification failed, or a run did."""
EXIT_USAGE = 2
"""Bad input or configuration: nothing was done."""
EXIT_INTERRUPTED = 130


def say(message: str) -> None:
    """Results, on stdout (flushed: commands are often piped)."""
    print(message, flush=True)


def note(message: str) -> None:
    """Progress and warnings, on stderr."""
    print(message, file=sys.stderr, flush=True)
