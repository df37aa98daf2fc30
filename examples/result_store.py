"""Keep the results of a small hyper-parameter sweep in a LocalFileStore, and resume it.

Four fake "training runs" (one per learning rate) run at once. Each one writes its training log
line by line with ``store.open(..., "w")``, saves its metrics as JSON and its model as a pickle,
and records its progress in a ``TaskInfo``. One run fails on its first attempt. A second pass
over the same sweep then skips the finished runs, because their ``FINISHED`` record is in the
store, and retries only the failed one. Finally the script lists the records, loads the best
model lazily and shows the files on disk. Training is a few milliseconds of ``anyio.sleep``, and
everything is written to a temporary directory. Run it with ``python examples/result_store.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from datetime import datetime, timezone

import anyio
from rich.console import Console
from rich.table import Table

import aioflows as af

SWEEP = [{"lr": lr, "epochs": 5} for lr in (0.3, 0.1, 0.03, 0.01)]
FLAKY_LR = 0.3  # this run crashes on its first attempt
trained: list[float] = []  # learning rates actually trained, to show what the resume skipped


def config_hash(config: dict) -> str:
    """A stable digest of a config: the same in every process and on every machine."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def now() -> datetime:
    return datetime.now(timezone.utc)


async def train(store: af.ResultStore, config: dict, attempt: int) -> None:
    """One run: log each epoch, then save metrics and model, then mark the run FINISHED."""
    key = {"task": "train", "config_hash": config_hash(config)}
    unique_name = f"train-{SWEEP.index(config)}"
    info = af.TaskInfo(
        "train",
        key["config_hash"],
        unique_name,
        "running",
        config=config,
        started=now(),
        attempts=attempt,
    )
    await store.save_info(info)
    trained.append(config["lr"])
    try:
        losses = []
        async with store.open("log", "w", **key) as log:  # published only if the block succeeds
            for epoch in range(config["epochs"]):
                await anyio.sleep(0.005)  # stands in for an epoch of training
                loss = math.exp(-config["lr"] * 10 * (epoch + 1)) + abs(config["lr"] - 0.05)
                losses.append(round(loss, 4))
                await log.write(f"epoch {epoch}: loss {loss:.4f}\n")
                if config["lr"] == FLAKY_LR and attempt == 1 and epoch == 2:
                    raise FloatingPointError("loss became NaN")
        weights = {"layer": [config["lr"] * n for n in range(8)], "bias": losses[-1]}
        await store.save({"loss": losses[-1], "history": losses}, "metrics", **key)
        await store.save(weights, "model", **key, type_="pickle")  # our own data: trusted
    except Exception as exc:
        info.state, info.error = af.TaskState.FAILED, f"{type(exc).__name__}: {exc}"
    else:
        info.state = af.TaskState.FINISHED  # saved last: results first, then the record
    info.ended = now()
    await store.save_info(info)


async def run_sweep(store: af.ResultStore) -> int:
    """Train every config that has no FINISHED record yet; return how many were skipped."""
    skipped = 0
    async with anyio.create_task_group() as tg:
        for config in SWEEP:
            info = await store.load_info(task="train", config_hash=config_hash(config))
            if info is not None and info.state is af.TaskState.FINISHED:
                skipped += 1
                continue
            tg.start_soon(train, store, config, 1 if info is None else info.attempts + 1)
    return skipped


def list_files(base_dir: str) -> list[str]:
    """Every file under ``base_dir``, as sorted relative paths with ``/`` separators."""
    found = []
    for directory, _, names in os.walk(base_dir):
        for name in names:
            path = os.path.relpath(os.path.join(directory, name), base_dir)
            found.append(path.replace(os.sep, "/"))
    return sorted(found)


async def main() -> None:
    with tempfile.TemporaryDirectory() as base_dir:
        store = af.LocalFileStore(base_dir)
        await run_sweep(store)
        for info in await store.list_infos("train"):
            if info.state is af.TaskState.FAILED:
                key = {"task": "train", "config_hash": info.config_hash}
                assert not await store.exists("log", **key)  # the failed write left no log
                print(f"first pass: {info.unique_name} failed ({info.error})")
        first_pass = len(trained)
        skipped = await run_sweep(af.LocalFileStore(base_dir))  # as a later process would
        print(
            f"second pass: skipped {skipped} finished runs, "
            f"trained {len(trained) - first_pass} again"
        )

        table = Table(title="Runs in the store")
        for column in ("run", "lr", "state", "tries", "secs", "loss", "objects"):
            table.add_column(column, justify="right" if column in ("tries", "secs") else "left")
        best: tuple[float, af.Promise] | None = None
        for info in await store.list_infos("train"):  # ordered by config_hash
            key = {"task": "train", "config_hash": info.config_hash}
            results = await store.get_results(**key)  # {"log": str, "metrics": dict, ...}
            loss = results["metrics"]["loss"]
            if best is None or loss < best[0]:
                best = (loss, await store.load("model", **key, lazy=True))  # not read yet
            lr = (info.config or {})["lr"]
            row = (lr, info.state, info.attempts, f"{info.duration:.3f}", loss, " ".join(results))
            table.add_row(info.unique_name, *map(str, row))
        Console().print(table)

        assert best is not None
        model = await best[1].load()  # only the best model is read from disk
        print(f"best model: loss {best[0]}, layer {model['layer'][:3]}...")

        files = await anyio.to_thread.run_sync(list_files, base_dir)  # os.walk blocks
        print("on disk:", *files, sep="\n  ")
        print(f"Stored {len(files)} files for {len(await store.list_infos())} runs in {base_dir}")


if __name__ == "__main__":
    anyio.run(main)
