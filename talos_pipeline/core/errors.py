"""Errors an operator can act on.

Every failure a user can cause or fix (bad tag, unknown variant, upstream refusing, corrupt
download, bad configuration) is a `PipelineError`: the CLI prints its message without a
traceback, and Dagster shows it as the step failure. Anything else is a bug and keeps its
traceback.

The CLI's exit code follows the class: bad input or configuration (`ConfigError`,
`InputError`) exits 2; every other `PipelineError` (upstream, store, signing, verification)
exits 1.
"""

from __future__ import annotations


class PipelineError(Exception):
    """A failure with a message that says what happened, to what, and what to do next."""


class ConfigError(PipelineError):
    """A setting (environment variable, CLI flag, resource field) has a value we cannot use."""


class InputError(PipelineError):
    """A request names something that does not exist or cannot be asked for together: a Talos
    version the factory does not offer, an existing file without --force, a missing argument."""


class UpstreamError(PipelineError):
    """GitHub or the Talos Image Factory refused, failed, or sent something we cannot trust.

    `transient` marks failures worth retrying later (5xx, resets, truncated bodies), as
    opposed to answers that will not change (404 for an unknown version, 400 for a bad arch).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class StoreError(PipelineError):
    """The store cannot be read or written."""


class SigningError(PipelineError):
    """Signing or verification failed; the message says what failed and what to do."""
