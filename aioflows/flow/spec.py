"""What a user declares: task functions (``@task``), their specs and the ``Flow`` holding them.

Nothing here expands or runs anything. A spec records a function, its config grid and its
predecessors; :mod:`aioflows.flow.graph` turns the specs into task instances, and
:mod:`aioflows.flow.executor` runs those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, overload

from .. import _validate
from ..calls import CallPolicy, LimiterLike
from ..errors import FlowError
from ..retry import RetryLike
from ..stores.base import check_part

if TYPE_CHECKING:
    from ..stores.base import ResultStore
    from .executor import Executor
    from .graph import Graph
    from .run import FlowRun, TaskEvent

__all__ = ["Flow", "TaskOptions", "TaskSpec", "task"]

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS_ATTR = "__aioflows_task__"


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """The options ``@task`` attaches to a function (validated when the decorator runs)."""

    name: str | None = None
    #: rate, retry and timeout; a RateLimiter is shared, a rate makes a limiter per run.
    policy: CallPolicy = field(default_factory=CallPolicy)
    concurrency: int | None = None
    reduce: bool = False


@overload
def task(name: F, /) -> F: ...


@overload
def task(
    name: str | None = None,
    *,
    retry: RetryLike = None,
    timeout: float | None = None,
    concurrency: int | None = None,
    rate: LimiterLike | None = None,
    reduce: bool = False,
) -> Callable[[F], F]: ...


def task(
    name: str | Callable[..., Any] | None = None,
    *,
    retry: RetryLike = None,
    timeout: float | None = None,
    concurrency: int | None = None,
    rate: LimiterLike | None = None,
    reduce: bool = False,
) -> Any:
    """Mark a function as a flow task and attach how it runs.

    Usable bare (``@af.task``) or with options (``@af.task("train", retry=3)``). The function
    is returned unchanged, so it can still be called directly; the options travel with it.

    Args:
        name: The task's name in a flow (default: the function's name).
        retry: Retry policy for a failing call (a ``Retry`` or a number of attempts).
        timeout: Seconds one attempt may take.
        concurrency: At most this many instances of the task run at once.
        rate: Instances start at most at this rate: a rate gives each run its own limiter, a
            ``RateLimiter`` is shared by every run (and anything else using it).
        reduce: The task receives every instance of its predecessors at once, as
            ``list[Sweep]``, instead of running once per predecessor instance.
    """
    if callable(name):
        return task()(name)
    if name is not None and (not isinstance(name, str) or not name):
        raise FlowError(f"a task name must be a non-empty str, got {name!r}")
    if concurrency is not None:
        _validate.count("concurrency", concurrency)
    options = TaskOptions(
        name=name,
        policy=CallPolicy(rate=rate, retry=retry, timeout=timeout),
        concurrency=concurrency,
        reduce=bool(reduce),
    )

    def decorate(fn: F) -> F:
        if not callable(fn):
            raise FlowError(f"@task decorates a function, got {fn!r}")
        setattr(fn, _OPTIONS_ATTR, options)
        return fn

    return decorate


def options_of(fn: Callable[..., Any]) -> TaskOptions:
    options = getattr(fn, _OPTIONS_ATTR, None)
    return options if isinstance(options, TaskOptions) else TaskOptions()


class TaskSpec:
    """One task of a flow: a function, its config grid and the tasks it requires.

    Made by :meth:`Flow.add`, not by hand. ``requires``/``required_by`` add edges and return
    the spec, so they chain.

    Args:
        flow: The flow the spec belongs to.
        fn: The task function.
        config: Its config grid (None: one instance per predecessor combination).
        name: The task's name, unique in the flow.
        expand: How the grid expands: ``"product"`` or ``"zip"``.
        reduce: Whether one instance receives every instance of its predecessors.
        options: What ``@task`` attached to ``fn``.
    """

    __slots__ = ("_flow", "_requires", "config", "expand", "fn", "name", "options", "reduce")

    def __init__(
        self,
        flow: Flow,
        fn: Callable[..., Any],
        config: Mapping[str, Any] | None,
        name: str,
        expand: str,
        reduce: bool,
        options: TaskOptions,
    ) -> None:
        self._flow = flow
        self.fn = fn
        self.config = config
        self.name = name
        self.expand = expand
        self.reduce = reduce
        self.options = options
        self._requires: list[TaskSpec | str] = []

    def requires(self, *specs: TaskSpec | str) -> TaskSpec:
        """This task runs after each of ``specs`` and receives their results.

        Args:
            *specs: Specs of the same flow, or names of tasks (resolved when the graph is
                built, so a task may be named before it is added).

        Returns:
            This spec, to chain calls.

        Raises:
            FlowError: A spec of another flow, or something that is neither a spec nor a name.
        """
        for spec in specs:
            if not isinstance(spec, (TaskSpec, str)):
                raise FlowError(
                    f"{self.name!r} can require a TaskSpec or a task name, got {spec!r}"
                )
            if isinstance(spec, TaskSpec) and spec._flow is not self._flow:
                raise FlowError(f"{spec.name!r} belongs to another flow than {self.name!r}")
            if spec not in self._requires:
                self._requires.append(spec)
        return self

    def required_by(self, *specs: TaskSpec) -> TaskSpec:
        """Each of ``specs`` runs after this task and receives its results.

        Args:
            *specs: Specs of the same flow.

        Returns:
            This spec, to chain calls.

        Raises:
            FlowError: Something that is not a spec, or a spec of another flow.
        """
        for spec in specs:
            if not isinstance(spec, TaskSpec):
                raise FlowError(f"{self.name!r} can be required by a TaskSpec, got {spec!r}")
            spec.requires(self)
        return self

    @property
    def predecessors(self) -> list[str]:
        """Names of the tasks this one requires, in the order they were added."""
        return [s if isinstance(s, str) else s.name for s in self._requires]

    def __repr__(self) -> str:
        return f"TaskSpec({self.name!r}, requires={self.predecessors!r})"


def _same(one: tuple[Any, ...], two: tuple[Any, ...]) -> bool:
    return len(one) == len(two) and all(a is b for a, b in zip(one, two, strict=True))


class Flow:
    """A set of task specs and their dependencies; expand it with :meth:`graph`, run it with
    :meth:`run`.

    Args:
        name: A label for logs, displays and the CLI.
        config_ignore_prefix: Config keys starting with this are passed to the task but left
            out of its identity (``config_hash``), e.g. ``_workers`` or ``_device``.
        group_prefix: Marks zip groups in config grids (``[1, 2, "@g"]``).
    """

    def __init__(
        self,
        name: str = "flow",
        *,
        config_ignore_prefix: str | None = "_",
        group_prefix: str = "@",
    ) -> None:
        if not isinstance(name, str) or not name:
            raise FlowError(f"a flow name must be a non-empty str, got {name!r}")
        if config_ignore_prefix is not None and (
            not isinstance(config_ignore_prefix, str) or not config_ignore_prefix
        ):
            raise FlowError(
                "config_ignore_prefix must be None or a non-empty str, "
                f"got {config_ignore_prefix!r}"
            )
        if not isinstance(group_prefix, str) or not group_prefix:
            raise FlowError(f"group_prefix must be a non-empty str, got {group_prefix!r}")
        self.name = name
        self.config_ignore_prefix = config_ignore_prefix
        self.group_prefix = group_prefix
        self._specs: dict[str, TaskSpec] = {}
        # The last graph built, and what it was built from (see graph()).
        self._graph: Graph | None = None
        self._stamp: tuple[Any, ...] = ()

    def add(
        self,
        fn: Callable[..., Any],
        config: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        requires: Iterable[TaskSpec | str] = (),
        expand: str = "product",
        reduce: bool | None = None,
    ) -> TaskSpec:
        """Declare a task: ``fn`` runs once per expanded ``config`` per predecessor combination.

        Usage::

            data = flow.add(load, {"path": ["a.csv", "b.csv"]})
            flow.add(train, {"lr": [0.1, 0.01]}, requires=[data])   # 4 instances

        Args:
            fn: The task function, sync or async; its parameters are filled from its config,
                its predecessors' results (by task name) and ``ctx`` (the
                :class:`TaskContext`).
            config: The task's config grid, expanded by :func:`expand_config` (lists are
                alternatives); None: one instance per predecessor combination.
            name: The task's name, overriding ``@task``'s, which overrides the function's.
            requires: Specs or task names this task runs after and receives results from.
            expand: How the grid expands: ``"product"`` (lists crossed) or ``"zip"``.
            reduce: One instance receives every instance of its predecessors at once
                (``list[Sweep]``); None: as ``@task(reduce=...)`` says, else False.

        Returns:
            The new :class:`TaskSpec`, to chain ``requires``/``required_by`` on.

        Raises:
            FlowError: ``fn`` is not callable or has no usable name, the name is taken or
                not a valid store key, or ``config`` or ``expand`` is invalid.
        """
        if not callable(fn):
            raise FlowError(f"flow.add takes a function, got {fn!r}")
        if config is not None and not isinstance(config, Mapping):
            raise FlowError(f"the config of a task must be a dict, got {type(config).__name__}")
        options = options_of(fn)
        task_name = name or options.name or getattr(fn, "__name__", None)
        if not isinstance(task_name, str) or not task_name or task_name == "<lambda>":
            raise FlowError(f"give {fn!r} a name: flow.add(fn, name=...)")
        try:  # the name becomes a directory of file stores: the same rules as store keys
            check_part("task name", task_name)
        except (ValueError, TypeError) as exc:
            raise FlowError(str(exc)) from None
        if task_name in self._specs:
            raise FlowError(f"duplicate task name {task_name!r} in flow {self.name!r}")
        if expand not in ("product", "zip"):
            raise FlowError(f"unknown expand method {expand!r}; use 'product' or 'zip'")
        spec = TaskSpec(
            self,
            fn,
            config,
            task_name,
            expand,
            options.reduce if reduce is None else bool(reduce),
            options,
        )
        self._specs[task_name] = spec
        if isinstance(requires, (str, TaskSpec)):
            requires = (requires,)
        spec.requires(*requires)
        return spec

    @property
    def specs(self) -> list[TaskSpec]:
        """The task specs, in the order they were added."""
        return list(self._specs.values())

    def graph(self) -> Graph:
        """Expand every spec into task instances without running anything.

        The same :class:`Graph` is returned (and run by :meth:`run`) while the flow is
        unchanged: expanding a million instances costs seconds, and a run needs exactly what
        the last call built. Anything :meth:`add`, ``requires`` or setting an attribute of the
        flow or of a spec changes makes a new one; a config dict edited in place after it
        was added is not seen (give the spec a new dict: ``spec.config = {...}``).
        """
        from .graph import build_graph

        stamp = self._stamp_now()
        if self._graph is not None and _same(stamp, self._stamp):
            return self._graph
        graph = build_graph(self)
        self._graph, self._stamp = graph, stamp
        return graph

    def _stamp_now(self) -> tuple[Any, ...]:
        """What the graph is built from, compared by identity: the flow's prefixes, then each
        spec, its attributes and its requirements (None ends each spec's)."""
        parts: list[Any] = [self.config_ignore_prefix, self.group_prefix]
        for spec in self._specs.values():
            parts += (spec, spec.fn, spec.config, spec.name, spec.expand, spec.reduce)
            parts += (spec.options, *spec._requires, None)
        return tuple(parts)

    async def run(
        self,
        *,
        store: ResultStore | None = None,
        concurrency: int | None = None,
        force: str | Sequence[str] | None = None,
        fail_fast: bool = True,
        resources: Sequence[Any] | None = None,
        targets: Sequence[str] | None = None,
        on_event: Callable[[TaskEvent], Any] | None = None,
        progress: bool = False,
        executor: Executor | None = None,
    ) -> FlowRun:
        """Run every task instance once its predecessors are done.

        Usage::

            run = await flow.run(store=af.LocalFileStore(".aioflows"), concurrency=4)
            best = run.values("best")

        The graph is expanded and every argument checked before anything runs. Instances run
        as soon as their predecessors are done, sync functions in worker threads. With a store,
        each instance's results and :class:`TaskInfo` record are saved under its identity, and
        an instance whose finished record is there is loaded instead of run (``CACHED``).
        Cancelling the caller cancels every instance that is running; nothing outlives the
        call.

        Args:
            store: Where results and records are saved, and cached ones found
                (a :class:`ResultStore`); None: nothing is kept after the run.
            concurrency: At most this many instances run at once; None: no limit beyond each
                task's own ``@task(concurrency=...)``.
            force: Run these again even if cached: ``"all"``, a task name, ``"name+"`` (the
                task and all its descendants), or a list of those.
            fail_fast: On the first failure, cancel what is running and start nothing new
                (True), or let the branches that do not depend on it finish (False).
            resources: A pool of objects (GPU ids, connections...): each running instance
                holds one, as ``ctx.resource``, so at most ``len(resources)`` run at once.
            targets: Task names: run only their instances and those instances' ancestors.
            on_event: Called, sync or async, with a :class:`TaskEvent` on every state change.
            progress: Show a live display on stderr and a summary table at the end.
            executor: Where the instances' bodies run (None: in this process, async ones on
                its event loop, sync ones in worker threads); ``af.DaskExecutor`` runs them on
                a Dask cluster while scheduling, limits, retries and the store stay here
                (docs/distributed.md).

        Returns:
            The :class:`FlowRun`: every instance's state, result and error.

        Raises:
            FlowError: The flow or an argument is invalid (before anything runs): a cycle, an
                unknown ``force`` or ``targets`` name, an empty ``resources``, a ``store``
                that is not a store.
            ValueError, TypeError: A bad ``concurrency``.
            FlowFailed: Some instances failed; ``.run`` holds every state and result.
        """
        from .executor import run_flow

        return await run_flow(
            self.graph(),
            store=store,
            concurrency=concurrency,
            force=force,
            fail_fast=fail_fast,
            resources=resources,
            targets=targets,
            on_event=on_event,
            progress=progress,
            executor=executor,
        )

    def to_mermaid(self) -> str:
        """The expanded graph as a Mermaid flowchart."""
        from .render import to_mermaid

        return to_mermaid(self.graph())

    def to_dot(self) -> str:
        """The expanded graph in Graphviz DOT."""
        from .render import to_dot

        return to_dot(self.graph())

    def to_text(self) -> str:
        """The expanded graph as text readable in a terminal."""
        from .render import to_text

        return to_text(self.graph())

    def __repr__(self) -> str:
        return f"Flow({self.name!r}, tasks={list(self._specs)!r})"
