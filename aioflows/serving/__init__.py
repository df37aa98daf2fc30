"""Serving (API.md §7): endpoints with load/preprocess/process/postprocess hooks behind
submit-and-poll and synchronous HTTP routes, dynamic batching, durable requests, an async client.

- :mod:`.endpoint`: :class:`Endpoint` (the hooks) and :class:`Stats` (a request's numbers).
- :mod:`.requests`: a request's record and states, and the book that keeps them until they
  expire, written through a persistent store.
- :mod:`.runner`: an endpoint's queue, worker pool and guard, and the batcher.
- :mod:`.flows`: a Flow served as an endpoint.
- :mod:`.metrics`: ``/metrics``, in Prometheus' format.
- :mod:`.routes`: the Starlette app.
- :mod:`.server`: :class:`Server`, which holds them together.
- :mod:`.client`: :class:`Client`, the routes from Python.

Starlette, uvicorn and prometheus-client come with the ``server`` extra; the client needs only
httpx.
"""

from __future__ import annotations

from .client import Client
from .endpoint import Endpoint, Stats
from .server import Server

__all__ = ["Client", "Endpoint", "Server", "Stats"]
