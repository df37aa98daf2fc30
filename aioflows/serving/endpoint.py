"""What a served model is: :class:`Endpoint` and its hooks, and :class:`Stats`, a request's own
numbers.

The hooks are those clearml-serving users know (``load`` once, then ``preprocess`` →
``process`` → ``postprocess`` per request), each optional and each sync or async. A sync hook
runs in a worker thread (a model call must not block the event loop), bounded by the
endpoint's own capacity so that one endpoint's threads cannot starve another's; an async hook
runs on the loop. A hook left as the base class's is skipped, not called as an identity, so a
bare ``process`` costs one call per request.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import anyio

from .._callables import is_async_callable
from ..errors import InvalidArgument, InvalidArgumentType

__all__ = ["Endpoint", "Hook", "Stats", "hook"]

#: A hook made awaitable: ``await hook(data, state, stats)``.
Hook = Callable[..., Awaitable[Any]]


class Stats(Mapping[str, float]):
    """The numbers one request reports, summed per endpoint in ``/metrics``.

    Usage, in any hook::

        def process(self, data, state, stats):
            stats({"tokens": len(data["text"].split())})

    Each call adds its values to the request's (two calls with ``tokens=3`` report 6); when
    the request ends, the server adds them to the endpoint's ``aioflows_endpoint_stat`` sums and
    counts, labelled by name. A fresh instance per request, like ``state``, so concurrent
    requests never see each other's.
    """

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[str, float] = {}

    def __call__(self, values: Mapping[str, float] | None = None, /, **more: float) -> None:
        """Add ``values`` (and keyword values) to this request's numbers.

        Args:
            values: Numbers by stat name.
            **more: More numbers by stat name: ``stats(tokens=3)``.

        Raises:
            ValueError: A name that is not a non-empty str, or a value that is not a finite
                number.
            TypeError: ``values`` is not a mapping.
        """
        if values is not None and not isinstance(values, Mapping):
            raise InvalidArgumentType(f"stats() takes a dict of numbers, got {values!r}")
        for source in (values or {}, more):
            for name, value in source.items():
                if not isinstance(name, str) or not name:
                    raise InvalidArgument(f"a stat's name must be a non-empty str, got {name!r}")
                if (
                    isinstance(value, bool)
                    or not isinstance(value, (int, float))
                    or not math.isfinite(value)
                ):
                    raise InvalidArgument(f"stat {name!r} must be a finite number, got {value!r}")
                self._values[name] = self._values.get(name, 0) + value

    def __getitem__(self, name: str) -> float:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Stats({self._values!r})"


class Endpoint:
    """A served model: subclass it and define the hooks you need (each may be sync or async).

    Usage::

        class Sentiment(af.Endpoint):
            def load(self):                       # once, before the server serves
                self.words = {"good": 1, "bad": -1}

            def preprocess(self, body, state, stats):
                return body["text"].lower().split()

            def process(self, words, state, stats):
                return sum(self.words.get(w, 0) for w in words)

            def postprocess(self, score, state, stats):
                return {"score": score}

    ``state`` is a fresh dict per request, shared by that request's hooks; ``stats`` is its
    :class:`Stats`. With ``batch=af.Batch(...)``, ``process`` gets lists: the data, states and
    stats of the requests in the batch, and returns a list of the same length; ``preprocess``
    and ``postprocess`` still run per request. A hook's exception is that request's FAILURE
    (the batch's, for ``process``). A failing ``load`` stops the server from starting.
    """

    def load(self) -> None:
        """Load the model: runs once, at start-up, before any request is served."""

    def preprocess(self, body: Any, state: dict[str, Any], stats: Stats) -> Any:
        """Turn the request body into what ``process`` takes (default: the body itself).

        Args:
            body: The request's JSON body, decoded.
            state: A dict of this request's, shared by its hooks.
            stats: This request's :class:`Stats`.
        """
        return body

    def process(self, data: Any, state: dict[str, Any], stats: Stats) -> Any:
        """Compute the result (default: the data itself).

        With ``batch``, every argument is a list (one element per request in the batch) and
        the result must be a list of the same length.

        Args:
            data: What ``preprocess`` returned.
            state: The request's state dict.
            stats: The request's :class:`Stats`.
        """
        return data

    def postprocess(self, data: Any, state: dict[str, Any], stats: Stats) -> Any:
        """Turn ``process``'s result into the JSON answer (default: the result itself).

        Args:
            data: What ``process`` returned for this request.
            state: The request's state dict.
            stats: The request's :class:`Stats`.
        """
        return data


def hook(endpoint: Endpoint, name: str, limiter: anyio.CapacityLimiter) -> Hook | None:
    """``endpoint.<name>`` made awaitable, or None where the subclass kept the base's.

    A sync hook runs in a worker thread taken from ``limiter`` (the endpoint's), and a
    cancelled request waits for that thread to return (a thread cannot be interrupted; its
    result is then dropped): the endpoint's capacity stays taken while its code still runs.
    """
    method = getattr(endpoint, name)
    if not callable(method):
        raise InvalidArgumentType(f"{type(endpoint).__name__}.{name} must be callable")
    if getattr(type(endpoint), name, None) is getattr(Endpoint, name):
        return None
    if is_async_callable(method):
        result: Hook = method
        return result

    async def in_thread(*args: Any) -> Any:
        return await anyio.to_thread.run_sync(functools.partial(method, *args), limiter=limiter)

    return in_thread
