"""What ``GET /metrics`` shows, in Prometheus' text format (written by prometheus-client).

Per endpoint: requests by final state, their latency (accepted to finished), how many wait and
run now, and the sums and counts of what hooks reported through ``stats``. Each server has its
own registry, so two servers in one process (tests, an app mounting two) never mix counts, and
nothing is registered globally at import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from .requests import Record

if TYPE_CHECKING:
    from .runner import Runner

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Request latencies span a trivial model (sub-millisecond) to a long batch job.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class _Sum:
    __slots__ = ("count", "total")

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0


class Metrics:
    """One server's counters, latencies and custom stats."""

    def __init__(self, runners: Callable[[], Mapping[str, Runner]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "aioflows_requests",
            "Requests that reached a final state, by endpoint and state.",
            ["endpoint", "state"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "aioflows_request_duration_seconds",
            "Seconds from a request's acceptance to its final state.",
            ["endpoint"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        #: (endpoint, stat) -> its sum and how many requests reported it
        self._stats: dict[tuple[str, str], _Sum] = {}
        self.registry.register(_Live(runners, self._stats))
        #: The labelled children, looked up once each: ``labels()`` takes a lock and builds
        #: its key on every call, twice per request.
        self._counters: dict[tuple[str, str], Counter] = {}
        self._latencies: dict[str, Histogram] = {}

    def finished(self, endpoint: str, record: Record, stats: Mapping[str, float]) -> None:
        key = (endpoint, record.state.value)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self._requests.labels(*key)
        counter.inc()
        if record.finished_at is not None:
            latency = self._latencies.get(endpoint)
            if latency is None:
                latency = self._latencies[endpoint] = self._latency.labels(endpoint)
            latency.observe(max(0.0, record.finished_at - record.created_at))
        for name, value in stats.items():
            entry = self._stats.get((endpoint, name))
            if entry is None:
                entry = self._stats[endpoint, name] = _Sum()
            entry.total += value
            entry.count += 1

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Live(Collector):
    """What is read at scrape time: queue depths, running requests, custom stats."""

    def __init__(
        self,
        runners: Callable[[], Mapping[str, Runner]],
        stats: dict[tuple[str, str], _Sum],
    ) -> None:
        self._runners = runners
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        queued = GaugeMetricFamily(
            "aioflows_queue_depth", "Requests accepted and waiting to start.", labels=["endpoint"]
        )
        running = GaugeMetricFamily(
            "aioflows_requests_running", "Requests running now.", labels=["endpoint"]
        )
        for name, runner in self._runners().items():
            queued.add_metric([name], runner.queued)
            running.add_metric([name], len(runner.running))
        stats = SummaryMetricFamily(
            "aioflows_endpoint_stat",
            "Values hooks reported with stats({...}): their sum and how many requests did.",
            labels=["endpoint", "stat"],
        )
        for (endpoint, name), entry in sorted(self._stats.items()):
            stats.add_metric([endpoint, name], count_value=entry.count, sum_value=entry.total)
        yield queued
        yield running
        yield stats
