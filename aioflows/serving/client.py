"""An async client of an aioflows server, one method per route (Scale Launch's client, async).

Usage::

    async with af.Client("http://127.0.0.1:8000", api_key="s3cret") as client:
        request_id = await client.submit("sentiment", {"text": "good day"})
        record = await client.wait(request_id)         # long-polls, no poll loop of ours
        print(record["state"], record["result"])

An HTTP error is a :class:`~aioflows.ServingError` carrying the status and the server's JSON
error; a request that ended in FAILURE is not an error of ``wait`` (the record says it), but
is one of ``predict``, which has no record to give.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import anyio
import httpx

from ..errors import InvalidArgument, ServingError

__all__ = ["Client"]

#: What one long-poll asks the server for (its cap is 60 s); ``wait`` asks again until done.
_POLL = 30.0
_FINAL = frozenset({"SUCCESS", "FAILURE", "CANCELLED"})


class Client:
    """The routes of an aioflows server from Python.

    Args:
        base_url: Where the server is (with the mount prefix, if it is mounted).
        api_key: Sent as ``Authorization: Bearer``; never shown in reprs or errors.
        **httpx_kwargs: Passed to ``httpx.AsyncClient`` (``transport=`` for an in-process
            app, ``verify=``...). The default timeout leaves room for a long poll.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, **httpx_kwargs: Any) -> None:
        if not isinstance(base_url, str):
            raise InvalidArgument(f"base_url must be a str, got {base_url!r}")
        headers = dict(httpx_kwargs.pop("headers", None) or {})
        if api_key is not None:
            headers["Authorization"] = f"Bearer {api_key}"
        httpx_kwargs.setdefault("timeout", httpx.Timeout(10.0, read=_POLL + 30.0))
        self._http = httpx.AsyncClient(base_url=base_url, headers=headers, **httpx_kwargs)

    def __repr__(self) -> str:
        return f"Client({str(self._http.base_url)!r})"

    async def __aenter__(self) -> Client:
        await self._http.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._http.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        """Close the connections (what leaving ``async with client:`` does)."""
        await self._http.aclose()

    async def submit(self, endpoint: str, body: Any = None) -> str:
        """Queue a request; its id (the record is in the server's store when this returns).

        Args:
            endpoint: The endpoint's name on the server.
            body: The request body, any JSON value.

        Returns:
            The request's id, for :meth:`get`, :meth:`wait` and :meth:`cancel`.

        Raises:
            ServingError: The server refused it (404 unknown endpoint, 429 queue full...).
        """
        data = await self._call("POST", f"/v1/endpoints/{endpoint}/requests", body)
        request_id: str = data["id"]
        return request_id

    async def submit_batch(self, endpoint: str, bodies: Sequence[Any]) -> list[str]:
        """Queue many requests in one call; their ids, in order (all accepted, or none).

        Args:
            endpoint: The endpoint's name on the server.
            bodies: The request bodies, each any JSON value.

        Raises:
            ServingError: The server refused them.
        """
        data = await self._call("POST", f"/v1/endpoints/{endpoint}/requests:batch", list(bodies))
        ids: list[str] = data["ids"]
        return ids

    async def predict(self, endpoint: str, body: Any = None) -> Any:
        """Run a request and return its result; a FAILURE is a ServingError (500, or 504 past
        the endpoint's timeout) whose ``payload["id"]`` is the request's.

        Args:
            endpoint: The endpoint's name on the server.
            body: The request body, any JSON value.

        Raises:
            ServingError: The request failed, or the server refused it.
        """
        return (await self._call("POST", f"/v1/endpoints/{endpoint}/predict", body))["result"]

    async def get(self, request_id: str, *, wait: float | None = None) -> dict[str, Any]:
        """The request's record; with ``wait``, once final or after ``wait`` seconds (≤ 60).

        Args:
            request_id: What :meth:`submit` returned.
            wait: Seconds the server may hold the answer until the request is final; None:
                answer at once.

        Raises:
            ServingError: 404 for an unknown (or expired) request.
        """
        params = None if wait is None else {"wait": f"{wait:g}"}
        return await self._call("GET", f"/v1/requests/{request_id}", params=params)

    async def wait(self, request_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The request's final record, long-polling (each poll holds up to 30 s on the server).

        Args:
            request_id: What :meth:`submit` returned.
            timeout: Seconds to wait in all; None: until it is final.

        Raises:
            TimeoutError: It was not final after ``timeout`` seconds.
        """
        deadline = math.inf if timeout is None else anyio.current_time() + timeout
        while True:
            left = deadline - anyio.current_time()
            record = await self.get(request_id, wait=max(0.0, min(_POLL, left)))
            if record["state"] in _FINAL:
                return record
            if anyio.current_time() >= deadline:
                raise TimeoutError(
                    f"request {request_id} is still {record['state']} after {timeout:g} s"
                )

    async def cancel(self, request_id: str) -> dict[str, Any]:
        """Cancel a queued or running request; its record. A finished one is a 409.

        Args:
            request_id: What :meth:`submit` returned.

        Raises:
            ServingError: 409 if the request is already final, 404 if unknown.
        """
        return await self._call("DELETE", f"/v1/requests/{request_id}")

    async def endpoints(self) -> list[dict[str, Any]]:
        """What the server serves."""
        endpoints: list[dict[str, Any]] = (await self._call("GET", "/v1/endpoints"))["endpoints"]
        return endpoints

    async def healthz(self) -> dict[str, Any]:
        """The server's health (a ServingError 503 while it is not serving)."""
        return await self._call("GET", "/healthz")

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        content = json.dumps(body).encode() if method == "POST" else None
        headers = {"Content-Type": "application/json"} if content is not None else None
        response = await self._http.request(
            method, path, content=content, headers=headers, params=params
        )
        if response.is_success:
            data: dict[str, Any] = response.json()
            return data
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": response.text[:500]}
        if not isinstance(payload, dict):
            payload = {"error": str(payload)[:500]}
        error = str(payload.get("error") or response.reason_phrase)
        raise ServingError(response.status_code, error, payload)
