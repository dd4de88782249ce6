"""The server's logs: application lines (loggers `berth.*`) and access lines (`berth.access`), plain or JSON.

Configured once per worker process (`configure`, from app_from_env), to stderr like everything else `berth` says.
A JSON line is one object per line; a plain line is for a person, with every value that a client chose (the path,
a refusal's reason) escaped so that no request can write a line of its own into the log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

ACCESS = "berth.access"
FORMATS = ("plain", "json")


def _escaped(text: str) -> str:
    """Control characters and quotes as escapes (a path is client-chosen: a newline in it must not start a line)."""
    if text.isprintable() and '"' not in text:
        return text
    return json.dumps(text, ensure_ascii=False)[1:-1]


def _utc(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class Formatter(logging.Formatter):
    """Access records carry their fields as one dict (record.args); other records are application lines."""

    def __init__(self, form: str = "plain") -> None:
        super().__init__()
        self.json = form == "json"

    def format(self, record: logging.LogRecord) -> str:
        when = _utc(record.created)
        fields = record.args if record.name == ACCESS and isinstance(record.args, dict) else None
        if fields is not None:
            if self.json:
                return json.dumps({"time": when, "kind": "access", **fields}, ensure_ascii=False,
                                  separators=(",", ":"))
            refusal = f' refused="{_escaped(fields["refusal"])}"' if fields.get("refusal") else ""
            return (f'{when} {fields["client"]} {fields["account"]} "{fields["method"]} {_escaped(fields["path"])}" '
                    f'{fields["status"]} in={fields["bytes_in"]} out={fields["bytes_out"]} '
                    f'{fields["duration_ms"]}ms{refusal}')
        message = _escaped(record.getMessage()) if not self.json else record.getMessage()
        if record.exc_info:  # a traceback keeps its lines (it is the server's own text)
            message += "\n" + self.formatException(record.exc_info)
        if self.json:
            return json.dumps({"time": when, "kind": "app", "level": record.levelname.lower(), "logger": record.name,
                               "message": message}, ensure_ascii=False, separators=(",", ":"))
        return f"{when} {record.levelname.lower()} {record.name}: {message}"


def configure(form: str = "plain", level: str = "info", access: bool = False) -> None:
    """Every `berth.*` logger writes through one handler in `form`; the access logger only when `access` is on."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Formatter(form))
    root = logging.getLogger("berth")
    for old in list(root.handlers):  # configured again (tests, a second app in one process): replace, not add
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    logging.getLogger(ACCESS).setLevel(logging.INFO if access else logging.CRITICAL + 1)


def granian_config(form: str) -> dict[str, Any]:
    """granian's own logging (its `_granian` logger: start, workers, shutdown) in the same form as ours: given to
    Granian(log_dictconfig=...), which merges it over its defaults (granian/log.py LOGGING_CONFIG)."""
    formatter = {"()": f"{__name__}.Formatter", "form": form}
    return {"formatters": {"generic": formatter, "access": formatter},
            "handlers": {"console": {"formatter": "generic", "class": "logging.StreamHandler",
                                     "stream": "ext://sys.stderr"},
                         "access": {"formatter": "access", "class": "logging.StreamHandler",
                                    "stream": "ext://sys.stderr"}}}
