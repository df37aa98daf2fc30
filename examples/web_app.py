"""A FastAPI app that fans out to a rate-limited upstream API: the recipe of docs/web.md.

- The lifespan creates what every request shares: one ``RateLimiter`` for the upstream's limit
  (a limiter per request would grant that limit to each request, and ten requests would send ten
  times what the upstream allows) and a task group that owns the flows the requests start (a
  flow that outlives its request needs an owner that outlives it; at shutdown the group cancels
  what still runs).
- ``GET /enrich?n=50`` makes 50 upstream calls with ``af.map`` under the shared limiter, inside
  ``af.cancel_on_disconnect(request)``: FastAPI does not cancel a handler whose client has left,
  the helper does, so a client that gives up stops the calls made for it.
- ``POST /reports`` starts a report flow in the lifespan's task group and answers 202 with its
  id; ``GET /reports/{id}`` says how it is going, and its result once it has one.

Run as a script, it serves the app with uvicorn on a free port of 127.0.0.1, makes a request
that completes, one whose client gives up half-way, and a report, prints what happened and
exits, in two seconds or so: ``python examples/web_app.py``. Serve it with
``uvicorn examples.web_app:app``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import anyio.abc
import httpx
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

import aioflows as af


class Upstream:
    """A stand-in for the upstream API (an ``af.HttpClient`` in a real app); counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def score(self, item: int) -> int:
        self.calls += 1
        await anyio.sleep(0.02)  # stands in for the HTTP round trip
        return item * item % 97


@dataclasses.dataclass
class Report:
    """A report flow's progress, as ``GET /reports/{id}`` shows it."""

    state: str = "running"
    result: Any = None
    error: str | None = None


@dataclasses.dataclass
class Shared:
    """What the lifespan creates once and every request uses."""

    upstream: Upstream
    limiter: af.RateLimiter
    jobs: anyio.abc.TaskGroup
    reports: dict[str, Report]


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Shared]]:
    limiter = af.RateLimiter("200/s", burst=20)  # the upstream's limit, for the whole app
    async with anyio.create_task_group() as jobs:
        yield {"shared": Shared(Upstream(), limiter, jobs, reports={})}  # request.state.shared
        jobs.cancel_scope.cancel()  # shutting down: reports still running are cancelled


app = FastAPI(lifespan=lifespan)


def shared(request: Request) -> Shared:
    value: Shared = request.state.shared
    return value


SharedDep = Annotated[Shared, Depends(shared)]


@app.get("/enrich")
async def enrich(request: Request, shared: SharedDep, n: int = 50) -> Response:
    """``n`` upstream calls for one request, cancelled if the client leaves."""
    async with af.cancel_on_disconnect(request):
        scores = await af.map(shared.upstream.score, range(n), concurrency=16, rate=shared.limiter)
        return JSONResponse({"n": n, "total": sum(scores)})
    return Response(status_code=499)  # the client has gone: nobody reads this


def report_flow(shared: Shared, sizes: list[int]) -> af.Flow:
    """A flow of one ``fetch`` per size and a ``total`` of them, calling the shared upstream."""

    @af.task
    async def fetch(size: int) -> int:
        scores = await af.map(shared.upstream.score, range(size), rate=shared.limiter)
        return sum(scores)

    @af.task(reduce=True)
    async def total(fetch: list[af.Sweep[int]]) -> int:
        return sum(sweep.value for sweep in fetch)

    flow = af.Flow("report")
    flow.add(total, requires=[flow.add(fetch, {"size": sizes})])
    return flow


async def run_report(flow: af.Flow, report: Report) -> None:
    """Run in the lifespan's task group: an error must end this report, not the group."""
    try:
        run = await flow.run(concurrency=4)
    except anyio.get_cancelled_exc_class():
        report.state = "cancelled"
        raise
    except Exception as exc:  # af.FlowFailed, or a bad flow: recorded, never raised
        report.state, report.error = "failed", repr(exc)
    else:
        report.state, report.result = "finished", run.values("total")[0]


class ReportOrder(BaseModel):
    sizes: list[int]


@app.post("/reports", status_code=202)
async def start_report(order: ReportOrder, shared: SharedDep) -> dict[str, str]:
    report_id = uuid.uuid4().hex[:12]
    shared.reports[report_id] = report = Report()
    shared.jobs.start_soon(run_report, report_flow(shared, order.sizes), report)
    return {"id": report_id}


@app.get("/reports/{report_id}")
async def get_report(report_id: str, shared: SharedDep) -> dict[str, Any]:
    if report_id not in shared.reports:
        raise HTTPException(status_code=404, detail=f"no report {report_id!r}")
    return dataclasses.asdict(shared.reports[report_id])


@app.get("/stats")
async def stats(shared: SharedDep) -> dict[str, int]:
    return {"upstream_calls": shared.upstream.calls}


async def upstream_calls(http: httpx.AsyncClient) -> int:
    calls: int = (await http.get("/stats")).json()["upstream_calls"]
    return calls


async def use(base_url: str) -> int:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        answer = (await http.get("/enrich", params={"n": 50})).json()
        print(f"GET /enrich?n=50: total {answer['total']}, {await upstream_calls(http)} calls")

        # A client that gives up after 0.3 s on a request of 2,000 calls (10 s at 200/s).
        before = await upstream_calls(http)
        async with httpx.AsyncClient(base_url=base_url) as impatient:
            with anyio.move_on_after(0.3):
                await impatient.get("/enrich", params={"n": 2000})
        left_at = await upstream_calls(http)
        await anyio.sleep(0.3)
        later = await upstream_calls(http) - left_at
        print(
            f"a client left after 0.3 s and {left_at - before} of its 2000 calls:"
            f" {later} more started in the 0.3 s after"
        )

        created = await http.post("/reports", json={"sizes": [10, 20, 30]})
        report_id = created.json()["id"]
        with anyio.fail_after(20):  # a client polls: the report is not this request's to wait for
            report = (await http.get(f"/reports/{report_id}")).json()
            while report["state"] == "running":
                await anyio.sleep(0.05)
                report = (await http.get(f"/reports/{report_id}")).json()
        print(f"POST /reports ({created.status_code}), then GET: {report}")
    return 0 if later < 20 and report["state"] == "finished" else 1


def free_socket() -> socket.socket:
    """A bound socket on a free port of 127.0.0.1, handed to uvicorn as is."""
    # IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def main() -> int:
    sock = free_socket()
    host, port = sock.getsockname()
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", ws="none"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(20):
            while not server.started:  # set once the lifespan has started
                if server.should_exit:
                    return 1
                await anyio.sleep(0.01)
        try:
            status = await use(f"http://{host}:{port}")
        finally:
            server.should_exit = True
    sock.close()
    print("Web app stopped cleanly" if status == 0 else "Web app: something went wrong")
    return status


if __name__ == "__main__":
    sys.exit(anyio.run(main))
