"""Failures as operators read them: the asset's own message, not Dagster's wrappers."""

from __future__ import annotations

import re
from collections.abc import Iterable

import dagster as dg

from talos_pipeline.core.errors import PipelineError, UpstreamError

_CLASS_PREFIX = re.compile(r"^[\w.]+: ")


def step_failure(context: dg.AssetExecutionContext, exc: PipelineError) -> dg.Failure:
    """Transient upstream trouble may be retried by the RetryPolicy; anything else is final."""
    transient = isinstance(exc, UpstreamError) and exc.transient
    context.log.error(str(exc))
    return dg.Failure(description=str(exc), allow_retries=transient)


def asset_error(events: Iterable[dg.DagsterEvent]) -> str | None:
    """The message of the last step error among `events`: the asset's own error, not the retry
    wrapper's "Exceeded max_retries" nor the exception class in front of it."""
    message = None
    for event in events:
        error = getattr(event.event_specific_data, "error", None)
        while error is not None and error.message.startswith("Exceeded max_retries"):
            error = error.cause
        if error is not None:
            message = _CLASS_PREFIX.sub("", error.message.strip())
    return message
