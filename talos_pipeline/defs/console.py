"""A console logger for operators: one line per message, no stack traces.

Dagster's default console logger prints the full exception chain of every failed step. Our
errors already say what failed and what to do; the traces stay in the run's event log in the
UI for whoever needs them.
"""

import logging
import re
import sys

import dagster as dg

_DAGSTER_PREFIX = re.compile(r"^\w+ - [0-9a-f-]{36} - (?:\d+ - )?(?:[\w.\[\]]+ - )?")
_CLASS_PREFIX = re.compile(r"dagster\._core\.[\w.]+: ")


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        for marker in ("\n\nStack Trace:", "\nStack Trace:", "\n\nThe above exception"):
            message = message.split(marker, 1)[0]
        message = " ".join(line.strip() for line in message.splitlines() if line.strip())
        message = _CLASS_PREFIX.sub("", _DAGSTER_PREFIX.sub("", message))
        meta = getattr(record, "dagster_meta", None) or {}
        step = meta.get("step_key") or ""
        prefix = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7}"
        return f"{prefix} {step + ': ' if step else ''}{message}"


@dg.logger(
    config_schema={"log_level": dg.Field(str, default_value="INFO", is_required=False)},
    description="One line per message on stderr, without stack traces.",
)
def concise_console(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.getLogger("talos_pipeline.console")
    logger.setLevel(init_context.logger_config["log_level"].upper())
    logger.propagate = False
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_OneLine())
        logger.addHandler(handler)
    return logger
