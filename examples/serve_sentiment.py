"""Serve a small lexicon sentiment model with dynamic batching, and call it with af.Client.

The model is a word list with a score per word (a few dozen lines of text standing in for a
model file), parsed once in ``load``. Each request's text is tokenised in ``preprocess`` (per
request, with its own ``state`` and ``stats``), scored in ``process`` — batched: it gets the
token lists of up to 16 concurrent requests at once, the way a real model scores a batch on one
forward pass — and shaped into a JSON answer in ``postprocess``.

Run as a script, it starts uvicorn in this process on a free port of 127.0.0.1, waits until it
serves, then sends requests three ways (submit then wait, predict, submit_batch), shows the
batch sizes ``process`` saw and the ``stats`` in ``/metrics``, stops the server (which drains)
and exits. Everything stays on the loopback interface and takes a second or so. Run it with
``python examples/serve_sentiment.py``; serve it on its own with
``uvicorn examples.serve_sentiment:app`` or ``aioflows serve examples/serve_sentiment.py:server``.
"""

from __future__ import annotations

import socket
import sys
from collections import Counter
from typing import Any

import anyio
import httpx
import uvicorn

import aioflows as af

#: The "model file": one word and its score per line.
LEXICON = """
good 2
great 3
excellent 4
love 3
like 1
fine 1
fast 2
helpful 2
bad -2
poor -2
awful -4
hate -3
slow -1
broken -3
refund -1
not -1
"""

batch_sizes: Counter[int] = Counter()  # how many requests each call of process scored at once


class Sentiment(af.Endpoint):
    def load(self) -> None:
        # Sync hooks run in a worker thread: a real model may take seconds to load.
        self.scores: dict[str, int] = {}
        for line in LEXICON.strip().splitlines():
            word, score = line.split()
            self.scores[word] = int(score)

    def preprocess(self, body: Any, state: dict[str, Any], stats: af.Stats) -> list[str]:
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            raise ValueError('the body must be {"text": "..."}')
        state["text"] = body["text"]  # for postprocess: state is this request's own
        tokens = [word.strip(".,!?").lower() for word in body["text"].split()]
        stats({"tokens": len(tokens)})  # summed per endpoint in /metrics
        return tokens

    def process(
        self, batch: list[list[str]], states: list[dict[str, Any]], stats: list[af.Stats]
    ) -> list[int]:
        # Batched: one list of token lists in, one list of scores out, in the same order.
        batch_sizes[len(batch)] += 1
        return [sum(self.scores.get(token, 0) for token in tokens) for tokens in batch]

    def postprocess(self, score: int, state: dict[str, Any], stats: af.Stats) -> dict[str, Any]:
        label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
        return {"text": state["text"], "score": score, "label": label}


server = af.Server(result_ttl=600)
server.add("sentiment", Sentiment(), concurrency=2, batch=af.Batch(16, timeout=0.01))
app = server.asgi()  # its lifespan enters `async with server:`

REVIEWS = [
    "Great product, fast delivery!",
    "Awful. It arrived broken and I want a refund.",
    "It is fine.",
    "I love it, the support was helpful",
    "Not good, not bad",
    "Slow and poor",
    "Excellent",
    "I hate waiting",
]


async def use(base_url: str) -> None:
    async with af.Client(base_url) as client:
        print("Endpoints:", [(e["name"], e["batch"]) for e in await client.endpoints()])

        request_id = await client.submit("sentiment", {"text": REVIEWS[0]})  # 202: queued
        record = await client.wait(request_id)  # long-polls until SUCCESS/FAILURE/CANCELLED
        print(f"submit+wait: {record['state']} after {record['attempts']} attempt(s):")
        print("   ", record["result"])

        print("predict:", await client.predict("sentiment", {"text": REVIEWS[1]}))

        ids = await client.submit_batch("sentiment", [{"text": text} for text in REVIEWS])
        print(f"submit_batch: {len(ids)} requests")
        for request_id in ids:
            result = (await client.wait(request_id, timeout=30))["result"]
            print(f"    {result['score']:+d} {result['label']:<8} {result['text']}")

        bad = await client.submit("sentiment", {"txt": "typo"})  # preprocess raises
        record = await client.wait(bad)
        print("a bad body:", record["state"], "-", record["error"])

        async with anyio.create_task_group() as tg:  # 40 at once: the batcher groups them
            for n in range(40):
                tg.start_soon(client.predict, "sentiment", {"text": REVIEWS[n % len(REVIEWS)]})

    async with httpx.AsyncClient(base_url=base_url) as http:
        metrics = (await http.get("/metrics")).text
    stats = [line for line in metrics.splitlines() if line.startswith("aioflows_endpoint_stat")]
    print("/metrics:", *stats, sep="\n    ")


def free_socket() -> socket.socket:
    """A listening socket on a free port of 127.0.0.1, handed to uvicorn (no race for the
    port between choosing it and binding it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def main() -> int:
    sock = free_socket()
    host, port = sock.getsockname()
    config = uvicorn.Config(app, lifespan="on", log_level="warning", ws="none")
    http_server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(http_server.serve, [sock])
        with anyio.fail_after(20):
            while not http_server.started:  # set once the lifespan (load) is done
                if http_server.should_exit:  # a failing load ends the start-up
                    return 1
                await anyio.sleep(0.01)
        try:
            await use(f"http://{host}:{port}")
        finally:
            http_server.should_exit = True  # uvicorn stops; the lifespan drains the server
    print("Batch sizes process saw:", dict(sorted(batch_sizes.items())))
    print("Served", sum(size * n for size, n in batch_sizes.items()), "requests in batches")
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
