"""A flow served as an endpoint: the body overrides task configs, the result is the run's summary.

The body ``{task: {key: value}}`` is checked when the request is submitted — an unknown task or
key, or a graph that no longer builds, is a 400 before anything is queued — and each request runs
a copy of the flow with those values merged over the tasks' own configs. A run whose tasks
fail is still a result (``"ok": false`` with each instance's state): the request did what it
was asked, and the states say what went wrong.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from ..errors import FlowError, FlowFailed
from ..flow.run import FlowRun
from ..flow.spec import Flow
from ..stores import ResultStore
from .endpoint import Endpoint, Stats

__all__ = ["BadBody", "FlowEndpoint"]


class BadBody(ValueError):
    """A body the endpoint refuses before queueing it (answered 400)."""


class FlowEndpoint(Endpoint):
    """Runs ``flow`` once per request with the body's config overrides."""

    def __init__(self, flow: Flow, store: ResultStore | None) -> None:
        self.flow = flow
        self.store = store

    def check(self, body: Any) -> Flow:
        """The flow with the body's overrides; :class:`BadBody` for what cannot be."""
        if body is None:
            body = {}
        if not isinstance(body, Mapping):
            raise BadBody("a flow endpoint takes {task_name: {config_key: value}}")
        specs = {spec.name: spec for spec in self.flow.specs}
        for name, overrides in body.items():
            spec = specs.get(name)
            if spec is None:
                raise BadBody(f"unknown task {name!r}; the flow has {sorted(specs)}")
            if not isinstance(overrides, Mapping):
                raise BadBody(f"the overrides of task {name!r} must be an object")
            unknown = sorted(set(overrides) - set(spec.config or {}))
            if unknown:
                known = sorted(spec.config or {})
                raise BadBody(f"unknown config key(s) {unknown} of task {name!r}; it has {known}")
        copy = Flow(
            self.flow.name,
            config_ignore_prefix=self.flow.config_ignore_prefix,
            group_prefix=self.flow.group_prefix,
        )
        for spec in self.flow.specs:
            config = dict(spec.config) if spec.config is not None else None
            if spec.name in body:
                config = {**(config or {}), **body[spec.name]}
            copy.add(
                spec.fn,
                config,
                name=spec.name,
                requires=spec.predecessors,
                expand=spec.expand,
                reduce=spec.reduce,
            )
        try:
            copy.graph()
        except FlowError as exc:
            raise BadBody(str(exc)) from None
        return copy

    async def process(self, body: Any, state: dict[str, Any], stats: Stats) -> Any:
        flow = self.check(body)
        try:
            run = await flow.run(store=self.store)
        except FlowFailed as failed:
            run = failed.run
        stats({"instances": len(run.states)})
        return summary(run)


def summary(run: FlowRun) -> dict[str, Any]:
    """``{"ok", "states", "results"}``: every instance's state, and per task the values that
    finished, those that are not JSON given as their ``repr``."""
    return {
        "ok": run.ok,
        "states": {name: state.value for name, state in run.states.items()},
        "results": {task: [_json(value) for value in run.values(task)] for task in run.results},
    }


def _json(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return repr(value)
    return value
