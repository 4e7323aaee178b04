"""Logging setup: one JSON object per line on stderr, with repeated lines rate-limited."""

import json
import logging
import sys
import threading
import time

from memos_mip.bounds import clip

# Whatever a line quotes (a message, an error, a traceback), the line stays readable and the log cannot be
# grown by megabytes at a time.
MAX_FIELD_BYTES = 8192


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name}
        fields = None
        if message.startswith("{"):  # the request log's lines are JSON objects already
            try:
                fields = json.loads(message)
            except ValueError:
                pass
        if isinstance(fields, dict):
            entry.update(fields)
        else:
            entry["msg"] = message
        if note := getattr(record, "note", None):
            entry["note"] = note
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        for key, value in entry.items():
            if isinstance(value, str) and len(value) > MAX_FIELD_BYTES // 4:
                entry[key] = clip(value, MAX_FIELD_BYTES)
        return json.dumps(entry, ensure_ascii=False)


class RateLimit(logging.Filter):
    """Lets at most `per_interval` alike lines (same logger, level and message, or the same `similar` key a
    record carries in its extra) through per `interval` seconds; the last one let through says that more
    are suppressed, and the first one after the interval says how many were."""

    PER_INTERVAL = 10
    INTERVAL = 60.0
    MAX_KEYS = 4096

    def __init__(self, per_interval: int = PER_INTERVAL, interval: float = INTERVAL, clock=time.monotonic):
        super().__init__()
        self.per_interval, self.interval, self.clock = per_interval, interval, clock
        self._windows: dict[tuple, list] = {}  # key -> [window start, lines in it, lines suppressed]
        self._lock = threading.Lock()  # the writer thread and the reader pool log too

    def filter(self, record: logging.LogRecord) -> bool:
        similar = getattr(record, "similar", None)
        key = (record.name, record.levelno, similar if similar is not None else record.getMessage())
        with self._lock:
            return self._admit(key, record, self.clock())

    def _admit(self, key: tuple, record: logging.LogRecord, now: float) -> bool:
        window = self._windows.get(key)
        if window is None or now - window[0] >= self.interval:
            if window is not None and window[2]:
                record.note = f"{window[2]} similar lines suppressed in the last {self.interval:g} s"
            if window is None and len(self._windows) >= self.MAX_KEYS:
                self._prune(now)
                if len(self._windows) >= self.MAX_KEYS:
                    return True  # too many kinds of line to keep count of; lines that differ are no flood
            self._windows[key] = [now, 1, 0]
            return True
        window[1] += 1
        if window[1] < self.per_interval:
            return True
        if window[1] == self.per_interval:
            record.note = f"further similar lines suppressed for up to {self.interval:g} s"
            return True
        window[2] += 1
        return False

    def _prune(self, now: float) -> None:
        for key in [k for k, w in self._windows.items() if now - w[0] >= self.interval and not w[2]]:
            del self._windows[key]


def log_handler(stream=None) -> logging.Handler:
    """The daemon's log handler: JSON lines on `stream` (stderr), rate-limited."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RateLimit())
    return handler


def setup_logging(level: str) -> None:
    root = logging.getLogger()
    root.handlers[:] = [log_handler()]
    root.setLevel(level.upper())
