"""A small grid experiment as an aioflows flow: the README's main job.

    make_data ─> preprocess (2 scalings) ─> train (3 learning rates x 2 epoch counts) ─> best

``make_data`` draws a tiny two-class dataset from a fixed seed, ``preprocess`` scales it two
ways, ``train`` fits a logistic regression by plain gradient descent for every combination of
hyper-parameters (12 instances, run concurrently in worker threads since they are CPU-bound
sync functions), and the reduce task ``best`` picks the most accurate one.

Run it through the CLI, which keeps results in ``./.aioflows``; a second run loads every result
from there instead of computing it again::

    aioflows run examples/quickstart.py
    aioflows graph examples/quickstart.py
    aioflows show

or directly with ``python examples/quickstart.py`` (a temporary store, run twice to show the
cache).
"""

from __future__ import annotations

import asyncio
import math
import random
import tempfile
from typing import Any

import aioflows as af

Point = tuple[float, float]


@af.task
async def make_data(n: int, seed: int) -> dict[str, Any]:
    """Two overlapping Gaussian blobs, split 75/25 into train and test."""
    rng = random.Random(seed)
    rows = [
        ((rng.gauss(2.0 * label, 1.2), rng.gauss(3.0 * label, 1.5)), label)
        for label in (0, 1)
        for _ in range(n // 2)
    ]
    rng.shuffle(rows)
    cut = len(rows) * 3 // 4
    return {"train": rows[:cut], "test": rows[cut:]}


@af.task
async def preprocess(make_data: dict[str, Any], scaling: str) -> dict[str, Any]:
    """Scale both features with statistics of the training split only."""
    train = make_data["train"]
    columns = list(zip(*(x for x, _ in train), strict=True))
    if scaling == "standard":
        centre = [sum(c) / len(c) for c in columns]
        spread = [
            math.sqrt(sum((v - m) ** 2 for v in c) / len(c))
            for c, m in zip(columns, centre, strict=True)
        ]
    else:  # minmax
        centre = [min(c) for c in columns]
        spread = [max(c) - min(c) for c in columns]

    def scale(rows: list[tuple[Point, int]]) -> list[tuple[Point, int]]:
        return [
            (((x[0] - centre[0]) / spread[0], (x[1] - centre[1]) / spread[1]), y) for x, y in rows
        ]

    return {"train": scale(train), "test": scale(make_data["test"])}


@af.task(retry=2)
def train(preprocess: dict[str, Any], lr: float, epochs: int, ctx: af.TaskContext) -> float:
    """Logistic regression by batch gradient descent; returns test accuracy."""
    w = [0.0, 0.0, 0.0]
    rows = preprocess["train"]
    for _ in range(epochs):
        grad = [0.0, 0.0, 0.0]
        for (x0, x1), y in rows:
            p = 1.0 / (1.0 + math.exp(-(w[0] + w[1] * x0 + w[2] * x1)))
            for i, xi in enumerate((1.0, x0, x1)):
                grad[i] += (p - y) * xi
        w = [wi - lr * g / len(rows) for wi, g in zip(w, grad, strict=True)]
    correct = sum(
        (w[0] + w[1] * x0 + w[2] * x1 > 0) == bool(y) for (x0, x1), y in preprocess["test"]
    )
    ctx.logger.info("trained %s: weights %s", ctx.unique_name, w)
    return correct / len(preprocess["test"])


@af.task(reduce=True)
async def best(train: list[af.Sweep[float]]) -> dict[str, Any]:
    """The most accurate configuration among every train instance."""
    top = max(train, key=lambda sweep: sweep.value)
    return {
        "accuracy": top.value,
        "lr": top.config["lr"],
        "epochs": top.config["epochs"],
        "scaling": top.config["preprocess"]["scaling"],
    }


flow = af.Flow("quickstart")
data = flow.add(make_data, {"n": 400, "seed": 7})
prep = flow.add(preprocess, {"scaling": ["standard", "minmax"]}, requires=[data])
fits = flow.add(train, {"lr": [0.05, 0.3, 1.0], "epochs": [20, 100]}, requires=[prep])
flow.add(best, requires=[fits])


async def main() -> None:
    with tempfile.TemporaryDirectory() as base_dir:
        store = af.LocalFileStore(base_dir)
        run = await flow.run(store=store)
        [winner] = run.values("best")
        print(f"Best of {len(run.results['train'])} fits: {winner}")
        again = await flow.run(store=store)
        cached = sum(state is af.TaskState.CACHED for state in again.states.values())
        print(f"Second run: {cached} of {len(again.states)} instances cached")


if __name__ == "__main__":
    asyncio.run(main())
