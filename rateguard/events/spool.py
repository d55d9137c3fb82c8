"""A bounded on-disk spool for events Kafka could not take in time.

Append-only segment files in one directory (``EVENT_SPOOL_DIR``), named by a sequence
number (``000001000000.ndjson``). A line is one JSON event (``append``), or a part of
one workspace's events as the publisher queues them (``prepend``):
``<count>\t<workspace id as a JSON string>\t[<events>]`` (orjson writes no raw tab or
newline, so neither splits a line). Segments are read back oldest first, whole, and
deleted once read; a new segment can be written *before* the oldest one
(``prepend``), which is how events still in memory at shutdown keep their place in
line. The spool never grows past ``max_bytes``: ``append`` refuses instead
(the caller counts and logs the drop).

One process owns a directory at a time (an exclusive ``flock`` on ``.lock``); segments
a previous process left behind are published first by the next one.

Writes go through a buffered file flushed by the publisher's loop: the spool survives
a Kafka outage and a graceful restart, not a machine crash (the last buffered
kilobytes and the page cache are not fsync'ed).
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

import orjson

from rateguard.errors import SettingsError
from rateguard.events.schema import DEFAULTS, FIELDS, Event, Part, events_in

log = logging.getLogger(__name__)

_SUFFIX = ".ndjson"
_FIRST = 1_000_000  # room below for prepended segments


class Spool:
    def __init__(self, directory: str | os.PathLike, max_bytes: int, *,
                 segment_events: int = 20_000, segment_bytes: int = 16 * 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_events = max(1, segment_events)
        self.segment_bytes = segment_bytes
        self.bytes = 0  # on disk, including the open segment
        self.events = 0  # events held, including the open segment
        self._segments: list[tuple[int, int, int]] = []  # closed: (seq, bytes, events)
        self._current = None  # the open segment's file
        self._current_seq = 0
        self._current_bytes = 0
        self._current_events = 0
        self._lock_fd: int | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def open(self) -> "Spool":
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SettingsError(f"EVENT_SPOOL_DIR: cannot use {self.directory} "
                                f"({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SettingsError(f"EVENT_SPOOL_DIR: {self.directory} is in use by another "
                                "process; give each proxy its own directory") from None
        self._lock_fd = fd
        for path in self.directory.glob("*" + _SUFFIX):
            try:
                seq = int(path.name[: -len(_SUFFIX)])
                size = path.stat().st_size
            except (ValueError, OSError):
                continue
            with open(path, "rb") as fh:
                count = sum(_events_in(line) for line in fh)
            self._segments.append((seq, size, count))
            self.bytes += size
            self.events += count
        self._segments.sort()
        if self._segments:
            log.warning("events: %d event(s) left in the spool %s by a previous run; "
                        "they are published first", self.events, self.directory)
        return self

    def close(self) -> None:
        self._close_current()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def flush(self) -> None:
        if self._current is not None:
            self._current.flush()

    # -- writing ------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.events

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:012d}{_SUFFIX}"

    def _next_seq(self) -> int:
        last = self._segments[-1][0] if self._segments else _FIRST - 1
        return max(last, self._current_seq) + 1

    def append(self, event: Event) -> bool:
        """Write one event at the tail; False when the cap does not allow it."""
        line = orjson.dumps(event) + b"\n"
        if self.bytes + len(line) > self.max_bytes:
            return False
        if self._current is None:
            self._current_seq = self._next_seq()
            self._current = open(self._path(self._current_seq), "ab", buffering=256 * 1024)
        self._current.write(line)
        self._current_bytes += len(line)
        self._current_events += 1
        self.bytes += len(line)
        self.events += 1
        if self._current_events >= self.segment_events or \
                self._current_bytes >= self.segment_bytes:
            self._close_current()
        return True

    def prepend(self, parts: list[Part]) -> int:
        """Write ``parts`` as a segment read before every other; returns how many
        events did not fit under the cap (the newest ones are given up)."""
        lines = []
        size = 0
        kept = 0
        for workspace_id, body, count in parts:
            line = b"%d\t%s\t[%s]\n" % (count, orjson.dumps(workspace_id), body)
            if self.bytes + size + len(line) > self.max_bytes:
                break
            lines.append(line)
            size += len(line)
            kept += count
        if lines:
            first = min([s[0] for s in self._segments] +
                        ([self._current_seq] if self._current is not None else []) +
                        [_FIRST])
            seq = first - 1
            path = self._path(seq)
            with open(path, "wb") as fh:
                fh.writelines(lines)
            self._segments.insert(0, (seq, size, kept))
            self.bytes += size
            self.events += kept
        return events_in(parts) - kept

    def _close_current(self) -> None:
        if self._current is None:
            return
        self._current.close()
        self._current = None
        self._segments.append((self._current_seq, self._current_bytes, self._current_events))
        self._current_bytes = self._current_events = 0

    # -- reading ------------------------------------------------------------------------

    def take(self) -> list[Part]:
        """The oldest segment's events as parts, removed from the spool; [] when it is
        empty."""
        if not self._segments:
            if self._current is None or not self._current_events:
                return []
            self._close_current()
        seq, size, count = self._segments.pop(0)
        path = self._path(seq)
        parts: list[Part] = []
        try:
            with open(path, "rb") as fh:
                for line in fh:
                    part = _part_of(line)
                    if part is None:
                        log.error("events: skipped a damaged line in spool segment %s", path)
                    else:
                        parts.append(part)
            path.unlink()
        except OSError as exc:
            log.error("events: cannot read spool segment %s (%s); %d event(s) lost",
                      path, exc, count)
            parts = []
        self.bytes -= size
        self.events -= count
        return parts


def _events_in(line: bytes) -> int:
    if line[:1] == b"{":
        return 1
    try:
        return int(line.split(b"\t", 1)[0])
    except ValueError:
        return 0


def _part_of(line: bytes) -> Part | None:
    """A spool line as a part; None when it is damaged (e.g. cut by a crash)."""
    line = line.rstrip(b"\n")
    try:
        if line[:1] == b"{":  # one event (append)
            data = orjson.loads(line)
            missing = [name for name in FIELDS if name not in data and name not in DEFAULTS]
            if missing:  # an event cut short: every field but the later ones is there
                return None
            return (data["workspace_id"], line, 1)
        count, workspace_id, body = line.split(b"\t", 2)
        events = orjson.loads(body)
        if not isinstance(events, list) or len(events) != int(count):
            return None
        return (orjson.loads(workspace_id), body[1:-1], len(events))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
