"""Terminal output for memosctl: aligned streaming tables, a progress bar, human units."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import unicodedata
from datetime import datetime
from typing import IO

from memos_client.models import Cube


class ProgressLine:
    """A one-line status on stderr: redrawn in place on a terminal (at most 10 times a second), a
    line a second otherwise."""

    def __init__(self, stream: IO[str], enabled: bool):
        self.stream, self.enabled = stream, enabled
        self.tty = enabled and stream.isatty()
        self.started, self.last = time.monotonic(), float("-inf")
        self.drawn = False

    def draw(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < (0.1 if self.tty else 1.0) and not force):
            return
        self.last = now
        if self.tty:
            self.stream.write("\r" + text[:columns() - 1].ljust(columns() - 1))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\r" + " " * (columns() - 1) + "\r")
            self.stream.flush()


def bar(share: float) -> str:
    filled = int(min(max(share, 0.0), 1.0) * 30)
    return f"[{'#' * filled}{'.' * (30 - filled)}] {min(share, 1.0):4.0%}"


class Progress(ProgressLine):
    """The import's progress: cubes acknowledged, and the share of a regular file's bytes."""

    def __init__(self, stream: IO[str], total_bytes: int | None, enabled: bool):
        super().__init__(stream, enabled)
        self.total = total_bytes

    def update(self, count: int, done_bytes: int) -> None:
        rate = count / max(time.monotonic() - self.started, 1e-6)
        share = f"{bar(done_bytes / self.total)}  " if self.total else ""
        self.draw(f"importing  {share}{count:,} cube{'' if count == 1 else 's'}  {rate:,.0f}/s")


def emit(obj: dict) -> None:
    print(json.dumps(obj, ensure_ascii=False, default=json_value))


def json_value(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def columns() -> int:
    return max(shutil.get_terminal_size((100, 24)).columns, 40)


def table_width() -> int | None:
    """The columns a table may use: $COLUMNS when set, else the terminal's; None (print every cell whole)
    when stdout is not a terminal, so that `memosctl ls | less` or a file keeps every character."""
    if os.environ.get("COLUMNS", "").strip().isdigit() or sys.stdout.isatty():
        return columns()
    return None


def cell_width(text: str) -> int:
    return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
               for ch in text)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def fit(text: str, width: int) -> str:
    """One line of at most `width` terminal columns, ending in … when cut."""
    text = _one_line(text)
    if cell_width(text) <= width:
        return text
    out, used = [], 0
    for ch in text:
        w = cell_width(ch)
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def pad(text: str, width: int) -> str:
    return text + " " * (width - cell_width(text))


class Table:
    """Aligned columns that stream: widths are set by the first rows, each between its (min, max), and
    narrowed toward the minimums to fit the terminal; the last column takes what is left. Without a width
    (stdout not a terminal, no $COLUMNS) cells are never cut: columns are as wide as the first rows need."""

    MIN_LAST = 10

    def __init__(self, headers: tuple[str, ...], sizes: tuple[tuple[int, int], ...], buffer: int = 50):
        self.headers, self.sizes, self.buffer = headers, sizes, buffer
        self.pending: list[tuple[str, ...]] = []
        self.widths: list[int] | None = None
        self.width: int | None = None

    def row(self, cells: tuple[str, ...]) -> None:
        self.pending.append(cells)
        if self.widths is not None or len(self.pending) >= self.buffer:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        if self.widths is None:
            self.width = table_width()
            self.widths = self._fit_widths() if self.width else [
                max(cell_width(h), *(cell_width(_one_line(r[i])) for r in self.pending))
                for i, h in enumerate(self.headers[:len(self.sizes)])]
            self._line(self.headers)
        for cells in self.pending:
            self._line(cells)
        self.pending = []

    def _fit_widths(self) -> list[int]:
        widths = [max(cell_width(h), *(cell_width(fit(r[i], cap)) for r in self.pending))
                  for i, (h, (_, cap)) in enumerate(zip(self.headers, self.sizes))]
        floors = [min(w, lo) for w, (lo, _) in zip(widths, self.sizes)]
        room = self.width - 2 * len(widths) - self.MIN_LAST
        while sum(widths) > room:
            slack = [w - f for w, f in zip(widths, floors)]
            i = max(range(len(widths)), key=slack.__getitem__)
            if not slack[i]:
                break
            widths[i] -= 1
        return widths

    def _line(self, cells) -> None:
        assert self.widths is not None
        if not self.width:
            parts = [pad(_one_line(c), w) for c, w in zip(cells, self.widths)]
            print("  ".join([*parts, _one_line(cells[-1])]).rstrip())
            return
        parts = [pad(fit(c, w), w) for c, w in zip(cells, self.widths)]
        rest = max(self.width - sum(self.widths) - 2 * len(self.widths), self.MIN_LAST)
        print("  ".join([*parts, fit(cells[-1], rest)]).rstrip())


def print_cube(cube: Cube) -> None:
    fields = [
        ("id", cube.id), ("namespace", cube.namespace), ("kind", cube.kind.name.lower()),
        ("state", cube.state.name.lower()), ("version", f"{cube.version} (parent {cube.parent_version})"),
        ("tags", ", ".join(cube.tags) or "-"),
        ("metadata", json.dumps(cube.metadata, ensure_ascii=False) if cube.metadata else "-"),
        ("source", cube.source or "-"), ("owner", cube.owner or "-"), ("priority", str(cube.priority)),
        ("created", when(cube.created_at)), ("updated", when(cube.updated_at)),
        ("expires", when(cube.expires_at)),
        ("accessed", f"{cube.access_count} time{'' if cube.access_count == 1 else 's'}, last "
                     f"{when(cube.last_accessed_at)}"),
    ]
    if cube.derived_from:
        fields.append(("derived from", ", ".join(cube.derived_from)))
    for key, value in fields:
        print(f"{key:<12} {value}")
    if cube.text is not None:
        print()
        print(cube.text)


def when(moment: datetime | None) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M") if moment else "-"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n]
    return " ".join(shown[:2]) or "0s"


def size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
