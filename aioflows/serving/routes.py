"""The HTTP routes of a :class:`~aioflows.Server`, as a Starlette app (API.md §7).

Every answer is JSON, errors included (``{"error": ...}``), with the status codes the contract
names. Each route checks the bearer key (when the server has keys), then that the server is
started, then does its one thing; bodies are read as a stream and refused with 413 the moment
they pass ``max_body``, so an oversized upload is never held in memory.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .flows import BadBody, FlowEndpoint
from .metrics import CONTENT_TYPE
from .requests import Record, State, new_id
from .runner import QueueFull, Runner

if TYPE_CHECKING:
    from .server import Server

__all__ = ["MAX_WAIT", "app"]

#: The longest ``?wait=`` a GET holds: a proxy between client and server would cut a longer
#: one, and a client wanting more asks again.
MAX_WAIT = 60.0

Handler = Callable[[Request], Awaitable[Response]]

#: When routes answer: new requests only while serving; reading and cancelling the ones it
#: holds while it drains too; health and metrics always.
_NEW = frozenset({"serving"})
_RUNNING = frozenset({"serving", "stopping"})
_ANY = frozenset({"new", "starting", "serving", "stopping", "stopped"})


class _Refused(Exception):
    """An answer other than success: status, message, extra fields and headers."""

    def __init__(
        self,
        status: int,
        error: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.status, self.error, self.headers, self.extra = status, error, headers, extra


#: The answers' encoder, made once (``json.dumps`` with options makes one per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = _ENCODER.encode(data).encode()
    return Response(body, status, headers, media_type="application/json")


def app(server: Server) -> Starlette:
    """The app for ``server``: its routes, JSON 404/405s, and a lifespan that runs it."""

    def route(handler: Handler, *, auth: bool = True, phases: frozenset[str] = _NEW) -> Handler:
        """``handler`` behind the key check and the phases it may run in (else 503)."""
        keys = [key.encode() for key in server.api_keys or ()]

        async def endpoint(request: Request) -> Response:
            try:
                if auth and keys:
                    _authorize(request, keys)
                if server.phase not in phases:
                    raise _Refused(503, _not_serving(server.phase))
                return await handler(request)
            except _Refused as refused:
                return _json(
                    {"error": refused.error, **refused.extra}, refused.status, refused.headers
                )

        return endpoint

    def runner_of(request: Request) -> Runner:
        name = request.path_params["name"]
        runner = server.runners.get(name)
        if runner is None:
            raise _Refused(404, f"no endpoint named {name!r}; see GET /v1/endpoints")
        return runner

    async def body_of(request: Request) -> Any:
        limit = server.max_body
        too_big = f"the body is larger than the server's max_body of {limit} bytes"
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise _Refused(413, too_big)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _Refused(
                    413, f"the body is larger than the server's max_body of {limit} bytes"
                )
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except ValueError as exc:
            raise _Refused(400, f"the body is not valid JSON: {exc}") from None

    def checked(runner: Runner, body: Any) -> None:
        if isinstance(runner.endpoint, FlowEndpoint):
            try:
                runner.endpoint.check(body)
            except BadBody as exc:
                raise _Refused(400, str(exc)) from None

    def reserve(runner: Runner, count: int) -> None:
        try:
            runner.reserve(count)
        except QueueFull:
            raise _Refused(
                429,
                f"endpoint {runner.name!r} has {runner.queued} requests waiting "
                f"(max_queued={runner.max_queued}); retry later",
                headers={"Retry-After": "1"},
            ) from None

    async def accept(runner: Runner, bodies: list[Any], *, predict: bool = False) -> list[Record]:
        """Book the requests, write them to the store, then queue them: a request is
        durable before it is answered, and before it can start."""
        reserve(runner, len(bodies))
        records = [Record(new_id(), runner.name, body, ephemeral=predict) for body in bodies]
        for record in records:
            server.book.add(record)
        try:
            if len(records) == 1:
                await server.book.write(records[0])
            else:
                await server.book.write_all(records)
        except Exception as exc:
            runner.unreserve(len(records))
            server.book.forget(records)
            raise _Refused(
                500, f"could not store the request: {type(exc).__name__}: {exc}"
            ) from exc
        if not all([runner.put(record) for record in records]) and server.book.store is None:
            # Stopped while they were written, and nothing keeps them: not accepted. (With a
            # persistent store they are, and a restarted server runs them.)
            server.book.forget(records)
            raise _Refused(503, _not_serving(server.phase))
        return records

    async def submit(request: Request) -> Response:
        runner = runner_of(request)
        body = await body_of(request)
        checked(runner, body)
        (record,) = await accept(runner, [body])
        return _json({"id": record.id, "state": record.state.value}, 202)

    async def submit_batch(request: Request) -> Response:
        runner = runner_of(request)
        bodies = await body_of(request)
        if not isinstance(bodies, list):
            raise _Refused(400, "requests:batch takes a JSON list of request bodies")
        for body in bodies:
            checked(runner, body)
        records = await accept(runner, bodies)
        return _json({"ids": [record.id for record in records]}, 202)

    async def predict(request: Request) -> Response:
        runner = runner_of(request)
        body = await body_of(request)
        checked(runner, body)
        (record,) = await accept(runner, [body], predict=True)
        record = await server.book.wait(record, math.inf)
        if record.state is State.SUCCESS:
            if record.result_json is None:
                return _json({"result": record.result})
            body = f'{{"result":{record.result_json}}}'.encode()
            return Response(body, 200, media_type="application/json")
        if record.state is State.CANCELLED:
            return _json({"error": "the request was cancelled", "id": record.id}, 409)
        status = 504 if record.timed_out else 500
        return _json({"error": record.error, "id": record.id}, status)

    async def get(request: Request) -> Response:
        wait = request.query_params.get("wait")
        seconds = 0.0
        if wait is not None:
            try:
                seconds = float(wait)
            except ValueError:
                seconds = math.nan
            if not 0 <= seconds < math.inf:
                raise _Refused(400, f"wait must be a number of seconds >= 0, got {wait!r}")
        record = await record_of(request)
        record = await server.book.wait(record, min(seconds, MAX_WAIT))
        return _json(record.public())

    async def record_of(request: Request) -> Record:
        request_id = request.path_params["id"]
        record = await server.book.get(request_id)
        if record is None:
            raise _Refused(404, f"no request {request_id!r} (unknown, or expired)")
        return record

    async def cancel(request: Request) -> Response:
        record = await record_of(request)
        if record.final:
            raise _Refused(
                409,
                f"request {record.id} is already {record.state.value}",
                state=record.state.value,
            )
        if server.book.local(record.id) is not record:
            raise _Refused(409, f"request {record.id} is held by another server sharing the store")
        await server.runners[record.endpoint].cancel(record)
        record = await server.book.wait(record, MAX_WAIT)  # until the hook has stopped
        return _json(record.public())

    async def endpoints(request: Request) -> Response:
        return _json({"endpoints": [runner.describe() for runner in server.runners.values()]})

    async def healthz(request: Request) -> Response:
        if server.phase != "serving":
            return _json({"status": server.phase, "error": _not_serving(server.phase)}, 503)
        return _json({"status": "ok"})

    async def metrics(request: Request) -> Response:
        return Response(server.metrics.exposition(), media_type=CONTENT_TYPE)

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _json(
            {"error": f"{exc.detail}: {request.method} {request.url.path}"}, exc.status_code
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with server:
            yield

    # The routes are tried in this order, and no path matches two of them (but for the methods
    # of one path): the ones on the path of every request come first, so that a /predict is
    # not matched against five patterns before its own.
    return Starlette(
        routes=[
            Route("/v1/endpoints/{name}/predict", route(predict), methods=["POST"]),
            Route("/v1/endpoints/{name}/requests", route(submit), methods=["POST"]),
            Route("/v1/requests/{id}", route(get, phases=_RUNNING), methods=["GET"]),
            Route("/v1/requests/{id}", route(cancel, phases=_RUNNING), methods=["DELETE"]),
            Route("/v1/endpoints/{name}/requests:batch", route(submit_batch), methods=["POST"]),
            Route("/v1/endpoints", route(endpoints, phases=_RUNNING), methods=["GET"]),
            Route("/healthz", route(healthz, auth=False, phases=_ANY), methods=["GET"]),
            Route("/metrics", route(metrics, phases=_ANY), methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: not_found},
        lifespan=lifespan,
    )


def _authorize(request: Request, keys: list[bytes]) -> None:
    """Require ``Authorization: Bearer <one of keys>``, compared in constant time (every key
    is compared, so the time says nothing of which nor how much matched)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    given = token.strip().encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key)
    if scheme.lower() != "bearer" or not matched:
        raise _Refused(
            401,
            "missing or wrong API key: send Authorization: Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _not_serving(phase: str) -> str:
    if phase in ("new", "starting"):
        return (
            "the server is not started: run its app as the root ASGI app (its lifespan starts "
            "it), or enter `async with server:` in the host app's lifespan when you mount "
            "server.asgi() (a mounted app's lifespan is not run)"
        )
    return "the server is shutting down"
