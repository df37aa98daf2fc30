"""Enrich a file of user events with a (fake) IP lookup service, streaming, in bounded memory.

The script first writes 200 events, one JSON object per line, into a temporary directory; a few
lines are torn and a few addresses are invalid, as in any real log. It then streams the file
through a pipeline:

    read lines (an async generator over the file, through aiofiles)
    -> parse      a sync Stage: runs in worker threads; a torn line becomes None
    -> Filter     drop torn lines and events whose address is not an IP address
    -> enrich     8 concurrent lookups, at most 2000/s, retried on transient errors
    -> Batch      25 events per batch, or fewer once the first one has waited 50 ms
    -> write      append each batch to an output JSONL file, one write per batch

and prints a summary. Nothing touches the network: a lookup is a couple of milliseconds of
``anyio.sleep``, and about one lookup in twelve fails once with a connection reset, decided by a
seeded random generator so every run fails on the same events. Run it with
``python examples/stream_enrich.py``.
"""

from __future__ import annotations

import ipaddress
import json
import random
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiofiles
import anyio

import aioflows as af

N_EVENTS = 200
ACTIONS = ("login", "view", "search", "purchase", "logout")
COUNTRIES = {"10": "NL", "172": "DE", "192": "FR", "203": "AU"}

stats: Counter[str] = Counter()


def write_events(path: Path) -> None:
    """The input: 200 events, some torn lines, some bad addresses. Seeded, so always the same."""
    rng = random.Random(2024)
    with path.open("w", encoding="utf-8") as f:
        for n in range(N_EVENTS):
            ip = f"{rng.choice(list(COUNTRIES))}.{rng.randrange(256)}.{rng.randrange(256)}.7"
            if n % 29 == 13:
                ip = "999.0.0.1"  # not an IP address
            event = {"id": n, "user": f"user-{rng.randrange(40)}", "ip": ip}
            line = json.dumps({**event, "action": rng.choice(ACTIONS)})
            if n % 37 == 20:
                line = line[: len(line) // 2]  # a torn line, as a crash mid-write leaves
            f.write(line + "\n")


async def read_lines(path: Path) -> AsyncIterator[str]:
    """The source: an async generator. The pipeline closes it (and the file) when it stops."""
    async with aiofiles.open(path, encoding="utf-8") as f:
        async for line in f:
            yield line


def parse(line: str) -> dict[str, Any] | None:
    """Sync, so it runs in a worker thread: JSON decoding never blocks the event loop."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None  # counted by is_valid, which runs one call at a time


def is_valid(event: dict[str, Any] | None) -> bool:
    if event is None:
        stats["torn"] += 1
        return False
    try:
        ipaddress.ip_address(event["ip"])
    except ValueError:
        stats["bad ip"] += 1
        return False
    return True


class GeoService:
    """A fake remote lookup service: slowish, and now and then it drops a connection."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.calls: Counter[int] = Counter()

    async def lookup(self, ip: str, event_id: int) -> dict[str, str]:
        self.calls[event_id] += 1
        await anyio.sleep(0.001 + 0.002 * (event_id % 3))
        unlucky = random.Random(self.seed * 1000 + event_id).random() < 1 / 12
        if unlucky and self.calls[event_id] == 1:
            raise ConnectionResetError(f"lookup of {ip} reset by peer")  # transient
        return {"country": COUNTRIES[ip.split(".")[0]], "asn": f"AS{64500 + int(ip.split('.')[1])}"}


async def main() -> None:
    geo = GeoService(seed=7)

    async def enrich(event: dict[str, Any]) -> dict[str, Any]:
        return {**event, **await geo.lookup(event["ip"], event["id"])}

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "events.jsonl", Path(tmp) / "enriched.jsonl"
        write_events(source)

        async with aiofiles.open(target, "w", encoding="utf-8") as out:

            async def write(batch: list[dict[str, Any]]) -> int:
                await out.write("".join(json.dumps(event) + "\n" for event in batch))
                return len(batch)

            pipe = af.Pipeline(
                af.Stage(parse, workers=4),
                af.Filter(is_valid),
                af.Stage(enrich, workers=8, rate="2000/s", retry=af.Retry(3, backoff=0.005)),
                af.Batch(size=25, timeout=0.05),
                af.Stage(write),  # one writer: batches are appended one at a time
                buffer=32,
            )
            start = time.perf_counter()
            written = batches = 0
            async with pipe.stream(read_lines(source)) as done:
                async for count in done:
                    written += count
                    batches += 1
            elapsed = time.perf_counter() - start

        lines = target.read_text(encoding="utf-8").splitlines()
        enriched = [json.loads(line) for line in lines]

    assert len(enriched) == written == N_EVENTS - stats["torn"] - stats["bad ip"]
    assert all(event["country"] in COUNTRIES.values() for event in enriched)
    assert len({event["id"] for event in enriched}) == written  # each event exactly once
    retried = sum(1 for calls in geo.calls.values() if calls > 1)
    countries = Counter(event["country"] for event in enriched)
    print(
        f"Enriched {written} of {N_EVENTS} events in {batches} batches in {elapsed:.2f} s "
        f"({stats['torn']} torn lines and {stats['bad ip']} bad addresses dropped, "
        f"{retried} lookups retried after a reset)"
    )
    print("by country:", ", ".join(f"{c} {n}" for c, n in countries.most_common()))


if __name__ == "__main__":
    anyio.run(main)
