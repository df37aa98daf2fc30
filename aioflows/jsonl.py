"""The launcher's output file: one strict JSON line per record, and what a resume reads back.

The file is the resume state, so everything about it is here: a record as one line
(:func:`encode_line`), ids that read back from JSON as themselves (:func:`faithful`,
:func:`decode_id`), the exclusive lock a run holds, the read of the pairs already done with a
torn last line cut off (:func:`open_output`), and the appends (:func:`append`, :func:`finish`).
The file functions block: the launcher runs them in a worker thread.
"""

from __future__ import annotations

import json
import math
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from .errors import OutputFileError

if sys.platform != "win32":
    import fcntl

__all__ = [
    "append",
    "decode_id",
    "encode_line",
    "faithful",
    "finish",
    "open_output",
    "show",
    "utc_text",
]

#: What ``json.dumps(record, ensure_ascii=False, allow_nan=False)`` builds on every call, made
#: once: a line per finished call is the launcher's hot path.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)

#: The whole second last formatted by :func:`utc_text`, and its text.
_second: list[Any] = [math.nan, ""]


def utc_text(seconds: float) -> str:
    """``datetime.fromtimestamp(seconds, timezone.utc).isoformat()`` (a record's
    ``started_at``), at a fraction of its cost: the date and time of day are formatted once a
    second, the microseconds (rounded half to even, as ``datetime`` does) appended."""
    fraction, whole = math.modf(seconds)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        whole, micro = whole + 1.0, micro - 1_000_000
    elif micro < 0:  # before 1970
        whole, micro = whole - 1.0, micro + 1_000_000
    if whole != _second[0]:
        day = datetime.fromtimestamp(whole, timezone.utc).replace(tzinfo=None)
        _second[:] = [whole, day.isoformat()]
    if micro:
        return f"{_second[1]}.{micro:06d}+00:00"
    return f"{_second[1]}+00:00"  # isoformat leaves out a fraction of zero


def encode_line(record: dict[str, Any]) -> bytes:
    """One strict JSON line (no NaN) in UTF-8, readable where it can be.

    A string with a lone surrogate (an API reply cut mid-emoji) has no UTF-8 form; such a line
    is written with ``\\uXXXX`` escapes instead, which read back as the same string.
    """
    text = _ENCODER.encode(record) + "\n"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(record, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")


def faithful(ident: Any) -> bool:
    """Whether ``ident`` written as JSON reads back as the same value, of the same types."""
    if type(ident) is str or (type(ident) is int and ident.bit_length() < 4000):
        return True  # the usual ids, without a round trip (an int of 1,200 digits reads back)
    try:
        back = decode_id(json.loads(json.dumps(ident, ensure_ascii=True, allow_nan=False)))
    except (TypeError, ValueError, RecursionError):  # not JSON; NaN; more digits than int() reads
        return False
    return _same(ident, back)


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):  # an Enum or a str subclass comes back as the plain value
        return False
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def decode_id(value: Any) -> Any:
    """An id as read from the file: JSON lists were tuples (a list cannot be an id)."""
    if isinstance(value, list):
        return tuple(decode_id(v) for v in value)
    return value


def show(value: Any) -> str:
    """A short repr, even of a value whose repr fails (an int of 5,000 digits)."""
    try:
        text = repr(value)
    except Exception:
        return f"<a {type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


# --- the output file, in worker threads -----------------------------------------------------------


def open_output(path: Path) -> tuple[BinaryIO, dict[tuple[Any, int], dict[str, Any]]]:
    """Open the output for a run: locked, read, a torn last line cut; the handle and the pairs
    done. Anything refused (the lock held, a file not ours) leaves the file as it was."""
    handle = open(path, "a+b")  # noqa: SIM115 - the run closes it, and so drops the lock
    try:
        _lock(handle, path)
        handle.seek(0)
        raw = handle.read()
        done = _read_done(raw, path)
        end = raw.rfind(b"\n") + 1
        if end < len(raw):  # a line left unfinished by a crash: the next line starts clean
            handle.truncate(end)
    except BaseException:
        handle.close()
        raise
    return handle, done


def _lock(handle: BinaryIO, path: Path) -> None:
    """Take the output's exclusive lock for the run, or refuse at once.

    Two launchers appending to one file would each run every pair. ``flock`` rather than
    ``lockf``: its lock belongs to this open file, so a second launcher in the same process is
    refused too, and closing some other descriptor of the file does not drop it. The kernel
    drops it when the handle is closed, also when the process dies (``kill -9``).
    """
    if sys.platform == "win32":  # no flock: one launcher per file is then the user's to keep
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutputFileError(
            f"{path} is in use by another launcher, which holds its lock: two runs appending "
            "to one file would write every pair twice; wait for it to end, or use another file"
        ) from None


def append(handle: BinaryIO, text: bytes, sync: bool) -> None:
    handle.write(text)
    handle.flush()
    if sync:
        os.fsync(handle.fileno())


def finish(handle: BinaryIO, text: bytes) -> None:
    if text:
        handle.write(text)
    handle.flush()
    os.fsync(handle.fileno())


_FIELDS = frozenset({"id", "sample", "key", "attempts", "output", "error"})


def _read_done(raw: bytes, path: Path) -> dict[tuple[Any, int], dict[str, Any]]:
    """Pairs already done without error, from the output's bytes (a torn last line ignored).

    Anything else that does not parse as one of our records is an OutputFileError.
    """
    done: dict[tuple[Any, int], dict[str, Any]] = {}
    lines = raw.split(b"\n")
    complete = lines[:-1]  # the part after the last newline is a torn line (or empty)
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise OutputFileError(
                f"{path} line {number} is not JSON: it was not written by the launcher"
            ) from None
        if not isinstance(record, dict) or not record.keys() >= _FIELDS:
            raise OutputFileError(
                f"{path} line {number} is not a launcher record (fields {sorted(_FIELDS)})"
            )
        if record["error"] is None:
            ident = decode_id(record["id"])
            record["id"] = ident
            try:
                done[(ident, record["sample"])] = record
            except TypeError:  # a dict as id: not ours
                raise OutputFileError(
                    f"{path} line {number} has an id the launcher does not write: {show(ident)}"
                ) from None
    return done
