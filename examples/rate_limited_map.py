"""Fetch 90 fake pages from 3 fake hosts, politely: an overall rate, a rate per host, retries.

Nothing touches the network: a "fetch" is a few milliseconds of ``anyio.sleep``. Some pages
answer "429 Too Many Requests" once (``af.RateLimited``), which pauses the limiters the call
went through, and some fail once with a transient error; ``af.Retry`` deals with both. The
first 60 pages go through ``af.map`` (results in input order), the last 30 are streamed with
``af.imap`` through the same limiters. Run it with ``python examples/rate_limited_map.py``.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict

import anyio
from rich.console import Console
from rich.table import Table

import aioflows as af

HOSTS = ("alpha.example", "beta.example", "gamma.example")

tried: set[str] = set()
throttles: Counter[str] = Counter()
errors: Counter[str] = Counter()
finished: defaultdict[str, list[float]] = defaultdict(list)


def host_of(url: str) -> str:
    return url.split("/")[2]


async def fetch(url: str) -> int:
    """Pretend to GET ``url`` and return the body size; misbehave once on some pages."""
    host, page = host_of(url), int(url.rsplit("/", 1)[1])
    first_try = url not in tried
    tried.add(url)
    await anyio.sleep(0.002 + 0.001 * (page % 4))
    if first_try and page % 10 == 3:
        throttles[host] += 1
        raise af.RateLimited(retry_after=0.05)  # "429, come back in 50 ms"
    if first_try and page % 10 == 7:
        errors[host] += 1
        raise ConnectionResetError(url)  # transient: retried after a short backoff
    finished[host].append(time.perf_counter())
    return 1000 + page


async def main() -> None:
    urls = [f"https://{host}/pages/{n}" for n in range(30) for host in HOSTS]
    head, tail = urls[:60], urls[60:]
    overall = af.RateLimiter("100/s", burst=10)  # one limit shared by the map and the imap below
    per_host = af.KeyedRateLimiter("40/s", burst=4, overrides={"gamma.example": "20/s"})
    retry = af.Retry(3, backoff=0.01)
    start = time.perf_counter()

    sizes = await af.map(
        fetch, head, concurrency=8, rate=overall, key=host_of, per_key_rate=per_host, retry=retry
    )
    assert sizes == [1000 + int(url.rsplit("/", 1)[1]) for url in head]  # input order

    streamed = 0  # the rest as they finish, through the same limiters
    async with af.imap(
        fetch, tail, concurrency=8, rate=overall, key=host_of, per_key_rate=per_host, retry=retry
    ) as pages:
        async for _size in pages:
            streamed += 1
    elapsed = time.perf_counter() - start

    table = Table(title=f"Summary: {len(sizes)} mapped + {streamed} streamed in {elapsed:.2f} s")
    for column in ("host", "pages", "limit", "achieved", "429s", "errors retried"):
        table.add_column(column, justify="left" if column == "host" else "right")
    for host in HOSTS:
        done, limit = finished[host], per_host.rate_for(host)
        achieved = len(done) / (max(done) - start)
        row = (len(done), limit, f"{achieved:.1f}/s", throttles[host], errors[host])
        table.add_row(host, *map(str, row))
    total = sum(len(done) for done in finished.values())
    row = (total, overall.rate, f"{total / elapsed:.1f}/s", throttles.total(), errors.total())
    table.add_row("all", *map(str, row), style="bold")
    Console().print(table)


if __name__ == "__main__":
    anyio.run(main)
