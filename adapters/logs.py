"""The server's logs: application lines (loggers `berth.*`) and access lines (`AccessLines`), plain or JSON.

Configured once per worker process (`configure`, from app_from_env), to stderr like everything else `berth` says.
A JSON line is one object per line; a plain line is for a person, with every value that a client chose (the path,
a refusal's reason) escaped so that no request can write a line of its own into the log.

Access lines are written in batches, not through `logging`: a request only appends a tuple to this process's list
(issue 16's budget is ~3 us per request for metrics and log together, and a logging call with its record, its
JSON and its write(2) took ~14 us, measured); the list is formatted and written at most FLUSH_S later, when it
holds BATCH lines, and when the worker shuts down.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import select
import stat
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


def _quoted(text: str) -> str:
    """A JSON string: most values (a path, an account) need no escape, and the check is ~10x cheaper than encoding."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return _ENCODE(text)


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # json.dumps with options builds
#                                                                                  an encoder per call: ~2x slower
_stamp: list[Any] = [-1, -1, "", ""]  # the last second and millisecond formatted, and their texts


def _utc(created: float) -> str:
    """ISO 8601 UTC with milliseconds; one strftime per second, one format per millisecond (not per line)."""
    ms = int(created * 1000)
    if ms != _stamp[1]:
        whole = ms // 1000
        if whole != _stamp[0]:
            _stamp[0], _stamp[2] = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _stamp[1], _stamp[3] = ms, f"{_stamp[2]}.{ms % 1000:03d}Z"
    text: str = _stamp[3]
    return text


class Formatter(logging.Formatter):
    """Application lines (access lines are AccessLines' own)."""

    def __init__(self, form: str = "plain") -> None:
        super().__init__()
        self.json = form == "json"

    def format(self, record: logging.LogRecord) -> str:
        when = _utc(record.created)
        message = _escaped(record.getMessage()) if not self.json else record.getMessage()
        if record.exc_info:  # a traceback keeps its lines (it is the server's own text)
            message += "\n" + self.formatException(record.exc_info)
        if self.json:
            return _ENCODE({"time": when, "kind": "app", "level": record.levelname.lower(), "logger": record.name,
                            "message": message})
        return f"{when} {record.levelname.lower()} {record.name}: {message}"


# One request's access line, as the request leaves it: (time.time() at its end, seconds taken, client, method, path
# without the query, status, bytes in, bytes out, account or "-", refusal reason or None).
Access = tuple[float, float, str, str, str, int, int, int, str, "str | None"]


class AccessLines:
    """This process's access lines, written in batches: one write(2) of whole lines per batch, so that several
    workers writing to one file or pipe never interleave parts of lines (an O_APPEND file takes each write whole; a
    pipe only up to PIPE_BUF bytes, so a batch goes to a pipe in pieces of at most that, cut between lines).

    A line waits at most FLUSH_S (a timer on the event loop), and never more than BATCH lines wait: the list is
    written when it holds that many, so it is bounded. A batch that cannot be written (a full disk, a closed pipe)
    is dropped and counted, and the next batch that can be written says how many lines were lost. The price: a
    worker killed with -9 loses its last FLUSH_S of lines, and a file shared by workers holds each worker's lines
    in order but not all of them (a line's time says when it happened)."""

    FLUSH_S = 0.1
    BATCH = 256  # ~64 KiB of JSON lines: one write(2) per 256 requests instead of one each

    def __init__(self, fd: int, form: str = "plain") -> None:
        self.fd = fd
        self.json = form == "json"
        self._head = '{"time":"' if self.json else ""
        self.pending: list[Access] = []
        self.dropped = 0
        self._timer: asyncio.TimerHandle | None = None
        self._parts: dict[tuple[Any, ...], tuple[str, str]] = {}
        try:
            mode = os.fstat(fd).st_mode
            self.piece = 1 << 20 if stat.S_ISREG(mode) else select.PIPE_BUF
        except OSError:
            self.piece = select.PIPE_BUF
        atexit.register(self.flush)  # a process that ends without a lifespan shutdown (a script, a test)

    def add(self, line: Access) -> None:
        """Called once per request, on the event loop: keep it an append."""
        pending = self.pending
        pending.append(line)
        if len(pending) >= self.BATCH:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self.FLUSH_S, self.flush)
            except RuntimeError:  # no event loop (called from a thread or a script): written now
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self.pending = self.pending, []
        if not pending and not self.dropped:
            return
        try:
            text = "".join(self._formatted(pending))
            if self.dropped:
                text += self._app_line(f"{self.dropped} access lines could not be written and were dropped")
            data = text.encode("utf-8", "backslashreplace")
            while data:
                cut = len(data) if len(data) <= self.piece else data.rfind(b"\n", 0, self.piece) + 1 or self.piece
                written = os.write(self.fd, data[:cut])
                data = data[written:]
            self.dropped = 0
        except Exception:  # a log that cannot be written must not fail the requests: count what is lost
            self.dropped += len(pending)

    def format(self, line: Access) -> str:
        return self._formatted([line])[0]

    def _formatted(self, pending: list[Access]) -> list[str]:
        """A batch's lines. The lines of a hot manifest differ only in their time and duration, so the rest of a line
        is formatted once and kept, and the time once per millisecond: ~0.9 us a line instead of ~5 (measured)."""
        out, parts_of, head, split, last, stamp = [], self._parts, self._head, self._split, -1, ""
        if len(parts_of) >= 1024:  # paths name repositories: unbounded, so cleared, not grown
            parts_of.clear()
        for line in pending:
            parts = parts_of.get(line[2:])
            if parts is None:
                parts = parts_of[line[2:]] = split(line)
            ms = int(line[0] * 1000)
            if ms != last:
                last, stamp = ms, _utc(line[0])
            # ms as an exact number of thousandths: the shortest repr of n/1000 is n's digits (0.017, not 0.01700001)
            out.append(f"{head}{stamp}{parts[0]}{round(line[1] * 1e6) / 1000}{parts[1]}")
        return out

    def _split(self, line: Access) -> tuple[str, str]:
        """What goes between a line's time and its duration, and what follows its duration."""
        _, _, client, method, path, status, received, sent, account, refusal = line
        if self.json:  # the keys and their order of the entry written before (dashboards read them)
            return (f'","kind":"access","client":{_quoted(client)},"method":{_quoted(method)},'
                    f'"path":{_quoted(path)},"status":{status},"bytes_in":{received},"bytes_out":{sent},'
                    f'"duration_ms":',
                    f',"account":{_quoted(account)},"refusal":{"null" if refusal is None else _quoted(refusal)}}}\n')
        refused = f' refused="{_escaped(refusal)}"' if refusal else ""
        return (f' {_escaped(client)} {_escaped(account)} "{_escaped(method)} {_escaped(path)}" {status} '
                f'in={received} out={sent} ', f"ms{refused}\n")

    def _app_line(self, message: str) -> str:
        when = _utc(time.time())
        if self.json:
            return _ENCODE({"time": when, "kind": "app", "level": "warning", "logger": ACCESS,
                            "message": message}) + "\n"
        return f"{when} warning {ACCESS}: {message}\n"


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


_configured: dict[str, AccessLines] = {}  # "lines": this process's access lines, once configured


def access_lines() -> AccessLines:
    """This process's access lines: as `configure` made them, else plain lines to stderr."""
    lines = _configured.get("lines")
    if lines is None:
        lines = _configured["lines"] = AccessLines(sys.stderr.fileno())
    return lines


def configure(form: str = "plain", level: str = "info", access: bool = False) -> None:
    """Every `berth.*` logger writes through one handler in `form`, and access lines (when `access` is on, see
    create_app) take the same form."""
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
    old_lines = _configured.pop("lines", None)
    if old_lines is not None:
        old_lines.flush()
    if access:
        _configured["lines"] = AccessLines(handler.fd, form)


def granian_config(form: str) -> dict[str, Any]:
    """granian's own logging (its `_granian` logger: start, workers, shutdown) in the same form as ours: given to
    Granian(log_dictconfig=...), which merges it over its defaults (granian/log.py LOGGING_CONFIG)."""
    formatter = {"()": f"{__name__}.Formatter", "form": form}
    return {"formatters": {"generic": formatter, "access": formatter},
            "handlers": {"console": {"formatter": "generic", "class": "logging.StreamHandler",
                                     "stream": "ext://sys.stderr"},
                         "access": {"formatter": "access", "class": "logging.StreamHandler",
                                    "stream": "ext://sys.stderr"}}}
