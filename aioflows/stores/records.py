"""What a store remembers about a task instance: its state and a JSON-serialisable record.

The record is what makes a flow resumable: a FINISHED record under (task, config_hash) means
"this exact computation is done, load its results instead of running it". It is a pydantic model
so it validates on the way in and round-trips through files and Redis as JSON unchanged.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pydantic
import pydantic_core
from pydantic import AwareDatetime, BaseModel, ConfigDict, NonNegativeInt

from . import jsontext

__all__ = ["RawInfos", "TaskInfo", "TaskState", "from_micros", "micros", "raw_info"]


class TaskState(str, enum.Enum):
    """The life cycle of one task instance. Values are the lower-case names."""

    PENDING = "pending"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    KILLED = "killed"
    UPSTREAM_FAILED = "upstream_failed"
    CACHED = "cached"

    def __str__(self) -> str:
        return self.value

    @property
    def done(self) -> bool:
        """Whether the instance will not change state again in this run."""
        return self not in _NOT_DONE


_NOT_DONE = frozenset({TaskState.PENDING, TaskState.SCHEDULED, TaskState.RUNNING})
_UNSET: Any = object()


class TaskInfo(BaseModel):
    """The stored record of one task instance.

    ``task``, ``config_hash``, ``unique_name`` and ``state`` may be given positionally, as in
    API.md; everything else is keyword-only. Times are timezone-aware datetimes; ``error`` is the
    failure formatted as text (``"ValueError: bad lr"``), because exceptions are not JSON.
    ``run_id`` and ``inputs`` have defaults, so records written before they existed still load.
    Unknown fields in a stored record are ignored, so records written by a newer aioflows still
    load.

    Attributes:
        task: The instance's task name.
        config_hash: The instance's config hash: with ``task``, the run's key in the store.
        unique_name: The instance's unique name (``"train-3"``).
        state: Where the instance is: a :class:`TaskState` (or its string value).
        config: The config the function received.
        unique_config: The config that identifies the instance.
        started: When it started (timezone-aware).
        ended: When it ended (timezone-aware).
        attempts: Attempts made.
        error: The failure as text (``"ValueError: bad lr"``), for a FAILED instance.
        run_id: The run that wrote this record (``FlowRun.run_id``).
        inputs: Which run of each predecessor instance this one consumed: predecessor task ->
            {config_hash: that predecessor record's ``run_id``}.
    """

    model_config = ConfigDict(validate_assignment=True)

    task: str
    config_hash: str
    unique_name: str
    state: TaskState
    config: dict[str, Any] | None = None
    unique_config: dict[str, Any] | None = None
    started: AwareDatetime | None = None
    ended: AwareDatetime | None = None
    attempts: NonNegativeInt = 0
    error: str | None = None
    #: The run that wrote this record (``FlowRun.run_id``); None in records of older versions
    #: and in KILLED records, which are advice (see :mod:`aioflows.flow.cache`).
    run_id: str | None = None
    #: Which run of each predecessor instance this one consumed: predecessor task ->
    #: {config_hash: the run_id of that predecessor's record}. A FINISHED record whose
    #: predecessors have been computed again since is stale (make's rule) and runs again.
    #: None where unknown (records of older versions, which are taken as current).
    inputs: dict[str, dict[str, str | None]] | None = None

    def __init__(
        self,
        task: str = _UNSET,
        config_hash: str = _UNSET,
        unique_name: str = _UNSET,
        state: TaskState | str = _UNSET,
        **data: Any,
    ) -> None:
        # Pydantic models take keywords only; API.md gives the first four positionally. Absent
        # ones are left out (not None) so pydantic reports them as missing fields, which is
        # also what a stored record without them must raise when parsed.
        given = {"task": task, "config_hash": config_hash, "unique_name": unique_name}
        given["state"] = state
        super().__init__(**{k: v for k, v in given.items() if v is not _UNSET}, **data)

    @classmethod
    def from_json(cls, data: str | bytes) -> TaskInfo:
        """Parse a record produced by :meth:`to_json` (raises pydantic's ValidationError).

        Args:
            data: The record's JSON text.
        """
        try:
            return cls.model_validate_json(data)
        except pydantic.ValidationError as exc:
            # pydantic's parser refuses ints it cannot hold (a config holding 10**5000),
            # which its serialiser writes; jsontext reads them.
            if exc.errors()[0]["type"] != "json_invalid":
                raise
            try:
                parsed = jsontext.loads(data)
            except ValueError:
                raise exc from None
            return cls.model_validate(parsed)

    def to_json(self) -> str:
        """The record as JSON text, as stores write it (valid UTF-8 whatever the config holds)."""
        try:
            return self.model_dump_json(indent=2)
        except pydantic_core.PydanticSerializationError:
            # A string with a surrogate has no UTF-8 form: jsontext escapes it (a pair of them
            # reads back joined: the record describes the config, its hash identifies it). A
            # value pydantic cannot serialise at all raises again in model_dump.
            # The configs go as they are: pydantic's JSON mode mangles or refuses surrogates in
            # their keys, and the default hook serialises what json does not know as it would.
            configs = {"config", "unique_config"}
            data = self.model_dump(mode="json", exclude=configs)
            data = {
                f: getattr(self, f) if f in configs else data[f] for f in type(self).model_fields
            }
            return jsontext.dumps(
                data, indent=2, join_pairs=True, default=pydantic_core.to_jsonable_python
            )

    def to_bytes(self) -> bytes:
        """:meth:`to_json` as UTF-8, what a store writes; a record that cannot be JSON is an
        ``InvalidArgumentType`` naming its instance."""
        try:
            return self.to_json().encode()
        except pydantic_core.PydanticSerializationError as exc:
            from ..errors import InvalidArgumentType

            raise InvalidArgumentType(
                f"cannot save the TaskInfo of {self.unique_name!r} as JSON: {exc}"
            ) from exc

    @property
    def duration(self) -> float | None:
        """Seconds between ``started`` and ``ended``, when both are known."""
        if self.started is None or self.ended is None:
            return None
        return (self.ended - self.started).total_seconds()


def raw_info(
    task: str,
    config_hash: str,
    unique_name: str,
    state: TaskState | str,
    config: dict[str, Any] | None,
    unique_config: dict[str, Any] | None,
    started: int | None,
    ended: int | None,
    attempts: int,
    error: str | None,
) -> TaskInfo:
    """The validated record of fields kept raw (see :class:`RawInfos`): a ``unique_config``
    of None is the ``config``, times are integer microseconds since the epoch."""
    return TaskInfo(
        task,
        config_hash,
        unique_name,
        state,
        config=config,
        unique_config=config if unique_config is None else unique_config,
        started=from_micros(started),
        ended=from_micros(ended),
        attempts=attempts,
        error=error,
    )


@dataclass(frozen=True, slots=True)
class RawInfos:
    """Records of one task, not validated, field by field: one list per field, row ``i`` of
    every list making record ``i``.

    What a flow hands :meth:`ResultStore._save_advice` when it was stopped. Building a
    :class:`TaskInfo` validates every field (some 20 µs each); ten thousand records as ten
    lists built in one pass each cost a fraction of that, and a store writing them in bulk
    encodes the lists as they are. ``unique_config[i]`` is None where it is ``config[i]`` (a
    root instance's is its own config); times are integer microseconds since the epoch (UTC),
    exact both ways and cheap to write.
    """

    task: str
    config_hash: list[str]
    unique_name: list[str]
    state: list[TaskState]
    config: list[dict[str, Any] | None]
    unique_config: list[dict[str, Any] | None]
    started: list[int | None]
    ended: list[int | None]
    attempts: list[int]
    error: list[str | None]

    def __len__(self) -> int:
        return len(self.config_hash)

    def infos(self) -> list[TaskInfo]:
        """The records, validated, one by one."""
        return [
            raw_info(self.task, *row)
            for row in zip(
                self.config_hash,
                self.unique_name,
                self.state,
                self.config,
                self.unique_config,
                self.started,
                self.ended,
                self.attempts,
                self.error,
                strict=True,
            )
        ]


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICRO = timedelta(microseconds=1)


def micros(when: datetime | None) -> int | None:
    """``when`` (timezone-aware) as integer microseconds since the epoch, exactly."""
    return None if when is None else (when - _EPOCH) // _MICRO


def from_micros(value: int | None) -> datetime | None:
    """The UTC datetime of integer microseconds since the epoch, exactly."""
    return None if value is None else _EPOCH + timedelta(microseconds=value)
