"""Web-app helpers: stop a request's work when its client goes away.

An ASGI server does not cancel a handler whose client has disconnected. uvicorn notes the lost
connection and answers the request's next ``receive()`` with ``http.disconnect``; a handler that
never calls ``receive()`` again (every handler once its body is read) runs to the end, and its
fan-out keeps calling the upstream for an answer nobody will read (measured: 66 upstream calls
went on for 3 s after 10 clients left). :func:`cancel_on_disconnect` watches ``receive()`` in a
child task and cancels the block it guards when the disconnect arrives.

Starlette is the ``server`` extra's: it is imported when the helper is entered, never when
``aioflows`` is, and named only for the type checker otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = ["cancel_on_disconnect"]


@contextlib.asynccontextmanager
async def cancel_on_disconnect(request: Request) -> AsyncIterator[anyio.CancelScope]:
    """Cancel the block when the client of ``request`` disconnects, as ``move_on_after`` would.

    Usage::

        @app.get("/enrich")
        async def enrich(request: Request, n: int = 20) -> Response:
            async with af.cancel_on_disconnect(request):
                return JSONResponse(await af.map(call_upstream, range(n), rate=limiter))
            return Response(status_code=499)  # the client has gone; nobody reads this

    When the disconnect arrives, everything awaited in the block is cancelled (an ``af.map``
    stops its calls and starts no more) and the block exits *without an error*: the code after
    it runs, and the yielded scope's ``cancelled_caught`` is true. A block that finishes first is
    unaffected, and an exception raised in it (an ``HTTPException``, say) comes out as itself,
    never wrapped in an exception group, so the framework's handlers still see it.

    The disconnect can only be seen through ``request.receive()``, which also delivers the body,
    and two readers of it would steal each other's messages. So the helper first reads the whole
    body with ``await request.body()``: Starlette keeps it, so ``request.body()``,
    ``request.json()``, ``request.form()``, ``request.stream()`` and FastAPI's body parameters
    all still work inside the block. A body read to its end with ``request.stream()`` before the
    block is fine too; do not enter the helper halfway through such a stream. A client that
    disconnects while the body is being read gets its block cancelled at its first checkpoint.

    Args:
        request: The Starlette (or FastAPI) request of the handler, under any ASGI server
            that answers ``receive()`` with ``http.disconnect`` when the client goes, as the
            ASGI spec asks (tested under uvicorn, with and without ``BaseHTTPMiddleware``).

    Yields:
        The block's ``anyio.CancelScope``: ``cancelled_caught`` says whether the client left
        before the block finished; ``cancel()`` cuts the block short by hand.

    Cancellation:
        Entering reads the body, so it may wait for the client. Cancelling the handler from
        outside (a server shutting down) cancels the block and the watcher and propagates as
        usual; only a disconnect is absorbed.
    """
    from starlette.requests import ClientDisconnect

    scope = anyio.CancelScope()
    # A body already streamed to its end (request.stream()) cannot be read again, but then
    # receive() is free to watch. Starlette keeps the flag in _stream_consumed (0.x to 1.x).
    if not getattr(request, "_stream_consumed", False):
        try:
            await request.body()
        except ClientDisconnect:
            scope.cancel()
    error: Exception | None = None
    async with anyio.create_task_group() as watchers:
        if not scope.cancel_called:
            watchers.start_soon(_cancel_on_disconnect, request, scope)
        try:
            with scope:
                yield scope
        except Exception as exc:
            # Raised again outside the task group, which would wrap it in an ExceptionGroup
            # (and FastAPI would answer a 500 where the handler raised an HTTPException).
            error = exc
        finally:
            watchers.cancel_scope.cancel()
    if error is not None:
        try:
            raise error
        finally:
            error = None  # no reference cycle through this frame's traceback


async def _cancel_on_disconnect(request: Request, scope: anyio.CancelScope) -> None:
    """Wait for ``http.disconnect`` on ``request``, then cancel ``scope``."""
    while True:
        message = await request.receive()
        # Once the body is read an ASGI server sends nothing but the disconnect (uvicorn sends
        # it too when the response is complete, which the block ends before).
        if message["type"] == "http.disconnect":
            scope.cancel()
            return
        await anyio.lowlevel.checkpoint()  # a server that breaks that rule cannot spin us
