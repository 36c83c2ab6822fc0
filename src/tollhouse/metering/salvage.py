"""``tollhouse spool check|salvage DIR``: inspect a spool's fact log, and rescue what it holds.

``check`` reads every segment with the fact log's own reader (:func:`read_segment`) and decodes
every record; it changes nothing. Exit 0 when every segment is whole (a torn tail, as a crash
leaves, is normal: the next start cuts it), 1 when something is damaged, 2 when the directory
cannot be read.

``salvage`` rewrites each damaged segment with the records that still read and decode, under its
own name (so the replay order stays), after moving the original to ``DIR/damaged/``. A segment
whose magic is damaged is skipped by every start, so its records are stranded until salvaged.
Records that are corrupt cannot be rescued; they are counted. Run it with tollhouse stopped (the
log has one writer): a segment open in a running process makes it refuse (exit 2).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tollhouse.metering.factlog_format import (
    MAGIC,
    frame,
    read_segment,
    segment_path,
    segments,
)
from tollhouse.metering.facts import AccessLog, Final, Reserved, Served, decode_fact

__all__ = ["SegmentReport", "add_spool_arguments", "inspect_spool", "main_spool", "salvage_spool"]

DAMAGED_DIR = "damaged"


@dataclass
class SegmentReport:
    """What one segment holds and what is wrong with it."""

    path: Path
    size: int = 0
    kinds: Counter[str] = field(default_factory=Counter)  # reserved, served, final, access_log
    good: list[bytes] = field(default_factory=list)  # payloads that decode
    undecodable: int = 0
    header_ok: bool = True
    skipped: list[tuple[int, int]] = field(default_factory=list)  # (offset, bytes)
    torn_bytes: int = 0

    @property
    def damaged(self) -> bool:
        """Something a start would not repair: a bad magic, corrupt or undecodable records."""
        return not self.header_ok or bool(self.skipped) or self.undecodable > 0

    def line(self) -> str:
        """One human line."""
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.kinds.items())) or "no records"
        parts = [f"{self.path.name}: {len(self.good)} records ({kinds})"]
        if not self.header_ok:
            parts.append("DAMAGED header (every start skips this segment)")
        for off, n in self.skipped:
            parts.append(f"CORRUPT {n} bytes at offset {off}")
        if self.undecodable:
            parts.append(f"{self.undecodable} UNDECODABLE records")
        if self.torn_bytes:
            parts.append(f"torn tail of {self.torn_bytes} bytes (the next start cuts it)")
        return "; ".join(parts)


def _kind(payload: bytes) -> str | None:
    try:
        fact = decode_fact(payload)
    except ValueError:
        return None
    kinds = {Reserved: "reserved", Served: "served", Final: "final", AccessLog: "access_log"}
    return kinds.get(type(fact), "other")


def _inspect(path: Path) -> SegmentReport:
    data = path.read_bytes()
    read = read_segment(data)
    rep = SegmentReport(path, len(data), header_ok=read.header_ok, skipped=read.skipped)
    rep.torn_bytes = max(0, len(data) - read.good_end) if len(data) >= len(MAGIC) else 0
    for payload in read.payloads:
        kind = _kind(payload)
        if kind is None:
            rep.undecodable += 1
        else:
            rep.kinds[kind] += 1
            rep.good.append(payload)
    return rep


def inspect_spool(directory: Path) -> list[SegmentReport]:
    """A report per segment, oldest first; raises ``OSError`` if the directory cannot be read."""
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} is not a directory")
    os.listdir(directory)  # unreadable: raise here rather than report an empty spool
    return [_inspect(segment_path(directory, seq)) for seq in segments(directory)]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_segment(path: Path, payloads: list[bytes]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, b"".join([MAGIC, *frame(payloads)]))
        os.fsync(fd)
    finally:
        os.close(fd)


def _aside(damaged: Path, name: str) -> Path:
    target, n = damaged / name, 1
    while target.exists():
        target, n = damaged / f"{name}.{n}", n + 1
    return target


def _salvage_one(rep: SegmentReport, directory: Path) -> None:
    """Rewrite one damaged segment: good records to a temp file, original aside, rename."""
    damaged = directory / DAMAGED_DIR
    damaged.mkdir(exist_ok=True)
    tmp = rep.path.with_name(rep.path.name + ".salvage")
    if rep.good:
        _write_segment(tmp, rep.good)
    os.replace(rep.path, _aside(damaged, rep.path.name))
    _fsync_dir(damaged)
    if rep.good:
        os.replace(tmp, rep.path)
    _fsync_dir(directory)


def salvage_spool(directory: Path) -> list[SegmentReport]:
    """Rewrite every damaged segment (see the module doc); return the reports of those."""
    reports = [r for r in inspect_spool(directory) if r.damaged]
    for rep in reports:
        _salvage_one(rep, directory)
    return reports


def _open_by(directory: Path) -> int | None:
    """A process id that holds a file of ``directory`` open (Linux /proc), if any."""
    prefix = str(directory.resolve()) + os.sep
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                    return int(pid)
            except OSError:
                continue
    return None


def main_spool(args: argparse.Namespace) -> int:
    """``tollhouse spool check|salvage DIR``."""
    directory = Path(args.dir)
    try:
        reports = inspect_spool(directory)
    except OSError as e:
        print(f"tollhouse: spool {directory}: {e}", file=sys.stderr)
        return 2
    for rep in reports:
        print(rep.line())
    damaged = [r for r in reports if r.damaged]
    records = sum(len(r.good) for r in reports)
    print(f"{len(reports)} segments, {records} readable records, {len(damaged)} damaged")
    if args.action == "check":
        if damaged:
            print(f"run `tollhouse spool salvage {directory}` with tollhouse stopped")
        return 1 if damaged else 0
    return _salvage(directory, damaged)


def _salvage(directory: Path, damaged: list[SegmentReport]) -> int:
    if not damaged:
        print("nothing to salvage")
        return 0
    pid = _open_by(directory)
    if pid is not None:
        print(
            f"tollhouse: spool {directory} is open in process {pid}: stop tollhouse first",
            file=sys.stderr,
        )
        return 2
    try:
        done = salvage_spool(directory)
    except OSError as e:
        print(f"tollhouse: spool {directory}: salvage failed: {e}", file=sys.stderr)
        return 2
    for rep in done:
        print(
            f"salvaged {rep.path.name}: {len(rep.good)} records kept, original in "
            f"{directory / DAMAGED_DIR}"
        )
    return 0


def add_spool_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``tollhouse spool``."""
    p.add_argument(
        "action",
        choices=["check", "salvage"],
        help="check: report, change nothing; salvage: rewrite damaged segments",
    )
    p.add_argument("dir", help="the spool directory (metering.spool)")
