"""Mount an aioflows server in a FastAPI app under /ml, next to the app's own routes.

Starlette (and so FastAPI) does not run the lifespan of a mounted app (starlette#649), so the
host app enters ``async with server:`` in its own lifespan: that loads the endpoints before the
first request and drains them at shutdown. Without it, every /ml route answers 503 saying so.

Run as a script, it serves the FastAPI app with uvicorn on a free port of 127.0.0.1, calls the
mounted routes with ``af.Client(base_url=".../ml")`` and one route of the host app's own with
httpx, prints what they answered and exits, in a second or so. Run it with
``python examples/fastapi_mount.py``; serve it with ``uvicorn examples.fastapi_mount:api``.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import uvicorn
from fastapi import FastAPI

import aioflows as af


class Summarize(af.Endpoint):
    """A stand-in for a model: the first sentence of a text, and how long the text was."""

    async def process(self, body: Any, state: dict[str, Any], stats: af.Stats) -> Any:
        text = str(body["text"])
        await anyio.sleep(0.01)  # stands in for an awaited model call
        stats({"characters": len(text)})
        return {"summary": text.split(". ")[0].rstrip(".") + ".", "length": len(text)}


server = af.Server(result_ttl=600)
server.add("summarize", Summarize(), concurrency=4)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with server:  # a mounted app's lifespan is not run: enter the server here
        yield


api = FastAPI(lifespan=lifespan)
api.mount("/ml", server.asgi())


@api.get("/orders/{order_id}")
async def order(order_id: int) -> dict[str, Any]:
    """A route of the host app's own, served beside the mounted one."""
    return {"order": order_id, "status": "shipped"}


TEXT = (
    "The parcel arrived two days early. The box was dented but everything inside was fine. "
    "Would order again."
)


async def use(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as http:
        print("GET /orders/42:", (await http.get("/orders/42")).json())
        print("GET /ml/healthz:", (await http.get("/ml/healthz")).json())

    async with af.Client(f"{base_url}/ml") as client:  # the mount prefix is in the base URL
        print("endpoints:", [endpoint["name"] for endpoint in await client.endpoints()])
        print("predict:", await client.predict("summarize", {"text": TEXT}))
        request_id = await client.submit("summarize", {"text": "Short. And sweet."})
        record = await client.wait(request_id)
        print("submit+wait:", record["state"], record["result"])
        try:
            await client.submit("translate", {"text": TEXT})
        except af.ServingError as exc:  # the server's JSON error, with its status
            print("unknown endpoint:", exc.status_code, exc.error)


def free_socket() -> socket.socket:
    """A bound socket on a free port of 127.0.0.1, handed to uvicorn as is."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def main() -> int:
    sock = free_socket()
    host, port = sock.getsockname()
    http_server = uvicorn.Server(uvicorn.Config(api, lifespan="on", log_level="warning", ws="none"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(http_server.serve, [sock])
        with anyio.fail_after(20):
            while not http_server.started:  # set once the host's lifespan has started
                if http_server.should_exit:
                    return 1
                await anyio.sleep(0.01)
        try:
            await use(f"http://{host}:{port}")
        finally:
            http_server.should_exit = True
    print("Mounted under /ml and stopped cleanly:", server.phase)
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
