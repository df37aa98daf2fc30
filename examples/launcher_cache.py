"""Two overlapping prompt sweeps through one request cache, with token usage and its cost.

A (fake, local) LLM call answers each prompt after a few milliseconds and reports the tokens it
used. The first run sends prompts 0-29 into ``sweep-a.jsonl``; the second, a day later, sends
prompts 15-44, numbered differently, into ``sweep-b.jsonl``. Both use the same
``af.LocalFileStore`` as ``cache=`` and the same ``cache_key``, so the 15 prompts of the
overlap are served from the cache: no call, ``"cached": true`` in their records. A third run
with a new ``cache_key`` (the prompt changed) calls everything again. Prices are per key label
(two accounts, two tiers), so each summary shows tokens and cost per key. Nothing leaves the
machine. Run it with ``python examples/launcher_cache.py``.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import aioflows as af

KEYS = ["sk-demo-tier1-7d1e0a", "sk-demo-tier2-93bc4f"]
PRICES = {"key-0": 0.15, "key-1": 0.60}  # per 1,000 tokens, by key label
calls = 0


async def ask(sample: dict[str, Any], key: af.Key) -> dict[str, Any]:
    """The LLM call: an answer, and the tokens the response says it used."""
    global calls
    calls += 1
    await asyncio.sleep(0.003)
    key.report_usage(40 + len(sample["prompt"]))
    return {"text": f"an answer to {sample['prompt']!r}", "model": "demo-1"}


async def sweep(
    directory: Path, name: str, prompts: range, cache: af.ResultStore, cache_key: str
) -> list[dict[str, Any]]:
    output = directory / f"{name}.jsonl"
    data = [{"id": f"{name}-{n}", "prompt": f"prompt number {n}"} for n in prompts]
    launcher = af.Launcher(
        ask,
        keys=KEYS,
        rate_per_key="200/s",
        concurrency=8,
        output=output,
        cache=cache,
        cache_key=cache_key,
        price_per_1k_tokens=PRICES,
    )
    summary = await launcher.run(data)
    print(f"--- {name} (cache_key {cache_key!r})\n{summary}\n")
    return [json.loads(line) for line in output.read_text().splitlines()]


def everything_in(directory: Path) -> str:
    """The text of every file below ``directory``: the outputs and the cache."""
    return "".join(p.read_text() for p in directory.rglob("*") if p.is_file())


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        cache = af.LocalFileStore(directory / "cache")
        await sweep(directory, "sweep-a", range(0, 30), cache, "demo-1/prompt-v1")
        assert calls == 30
        records = await sweep(directory, "sweep-b", range(15, 45), cache, "demo-1/prompt-v1")
        assert calls == 45, calls  # the 15 prompts of the overlap made no call
        cached = [r for r in records if r["cached"]]
        assert len(records) == 30
        assert len(cached) == 15
        assert all(r["key"] is None and "usage" not in r for r in cached)
        assert all(r["usage"]["tokens"] > 0 for r in records if not r["cached"])
        await sweep(directory, "sweep-c", range(15, 45), cache, "demo-1/prompt-v2")
        assert calls == 75  # a new cache_key: every prompt is called again
        assert not any(secret in everything_in(directory) for secret in KEYS)
    print(
        f"Cached: {len(cached)} of {len(records)} pairs of the second sweep; {calls} calls in all"
    )


if __name__ == "__main__":
    asyncio.run(main())
