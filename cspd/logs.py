"""Log output: one line per record on stderr, with the record's ids as key=value pairs.

journald stores stderr of the service, so no file handling is needed. Fields
passed through ``extra=`` are appended in a stable order; the code never
passes passwords, CHAP secrets or tokens there.
"""

from __future__ import annotations

import logging
import sys

# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class FieldFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if not fields:
            return line
        pairs = " ".join(f"{key}={_render(value)}" for key, value in sorted(fields.items()))
        head, newline, rest = line.partition("\n")
        return f"{head} {pairs}{newline}{rest}"


def _render(value: object) -> str:
    text = str(value)
    if not text or any(c.isspace() for c in text) or '"' in text:
        return '"' + text.replace('"', '\\"') + '"'
    return text


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FieldFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log duplicates cspd.api's request lines.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
