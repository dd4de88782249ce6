"""The server's logs: application lines (loggers `berth.*`) and access lines (`berth.access`), plain or JSON.

Configured once per worker process (`configure`, from app_from_env), to stderr like everything else `berth` says.
A JSON line is one object per line; a plain line is for a person, with every value that a client chose (the path,
a refusal's reason) escaped so that no request can write a line of its own into the log.
"""

from __future__ import annotations

import json
import logging
import os
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


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # json.dumps with options builds
#                                                                                  an encoder per call: ~2x slower
_second: list[Any] = [-1, ""]  # the last whole second formatted, and its text (one strftime per second, not line)


def _utc(created: float) -> str:
    whole = int(created)
    if whole != _second[0]:
        _second[:] = [whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))]
    return f"{_second[1]}.{int(created % 1 * 1000):03d}Z"


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
                fields["time"] = when  # the entry's first key (adapters/http/accesslog.py), filled in here
                return _ENCODE(fields)
            refusal = f' refused="{_escaped(fields["refusal"])}"' if fields.get("refusal") else ""
            return (f'{when} {fields["client"]} {fields["account"]} "{fields["method"]} {_escaped(fields["path"])}" '
                    f'{fields["status"]} in={fields["bytes_in"]} out={fields["bytes_out"]} '
                    f'{fields["duration_ms"]}ms{refusal}')
        message = _escaped(record.getMessage()) if not self.json else record.getMessage()
        if record.exc_info:  # a traceback keeps its lines (it is the server's own text)
            message += "\n" + self.formatException(record.exc_info)
        if self.json:
            return _ENCODE({"time": when, "kind": "app", "level": record.levelname.lower(), "logger": record.name,
                            "message": message})
        return f"{when} {record.levelname.lower()} {record.name}: {message}"


class LineHandler(logging.Handler):
    """Each record as one write(2) of one line to a file descriptor: no buffer to flush (a line is never held back
    or lost with a killed worker), and on a pipe or an O_APPEND file each line lands whole, even with several worker
    processes writing at once. ~3 us cheaper per line than a StreamHandler with its flush (measured)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            while line:  # a pipe may take a long line in parts
                line = line[os.write(self.fd, line):]
        except Exception:
            self.handleError(record)


def configure(form: str = "plain", level: str = "info", access: bool = False) -> None:
    """Every `berth.*` logger writes through one handler in `form`; the access logger only when `access` is on."""
    # No line names a thread, a process or a source line: the logging HOWTO's "Optimization" switches, which save
    # the stack walk and lookups on every record (~1.5 us of a ~15 us access line, measured).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    handler = LineHandler(sys.stderr.fileno())
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
