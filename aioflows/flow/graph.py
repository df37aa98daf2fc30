"""From specs to task instances: expansion over config grids and predecessor combinations.

Each spec becomes one instance per expanded config per *compatible* combination of predecessor
instances. Two predecessor instances are compatible when they descend from the same instance of
every ancestor they share, so a task that joins two branches of an expanded ancestor never mixes
instances of different branches. Compatibility is decided by a hash join on each instance's
*lineage* (which instance of each multi-instance ancestor it descends from), so expansion costs
time linear in its output, and single-instance ancestors (chains, plain DAGs) add nothing to it.
"""

from __future__ import annotations

import graphlib
import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._callables import is_async_callable
from ..errors import FlowError
from ._bulk import gc_paused
from .config import expand_config
from .flatgrid import flat_grid
from .identity import encoded_config, node_digest, node_hasher, node_suffix, strip_ignored

if TYPE_CHECKING:
    from .spec import Flow, TaskSpec

__all__ = ["Binding", "Graph", "TaskNode", "build_graph"]


#: The lineage of an instance no later task joins on (shared: never written to).
_NO_LINEAGE: Mapping[str, int] = {}


class TaskNode:
    """One task instance: a spec with one expanded config and one set of predecessor instances.

    ``config`` is what the function receives; ``unique_config`` (without ignored keys, plus the
    predecessors' unique configs under their task names) and ``config_hash`` identify it.
    Made by :meth:`Flow.graph`, not by hand.

    A flow of a million instances keeps a million of these, so a node holds only what the run
    needs: ``unique_config`` is built when first read (a reduce's inputs, a record, a result)
    and kept, and instances of one config share its dict. So is ``config_hash``, for an
    instance whose config is a flat dict of scalars (:mod:`aioflows.flow.flatgrid`): such a
    config cannot change, and a run without a store never reads a hash.

    Attributes:
        unique_name: ``"<task>-<n>"``, n counting the task's instances from 1.
        task: The task's name.
        config: The expanded config the function receives.
        unique_config: The config that identifies the instance.
        config_hash: The digest of ``unique_config``: the instance's key in a store.
        predecessors: The predecessor instances it receives results from.
        reduce: Whether it receives every instance of its predecessors at once.
        successors: The instances that receive its results.
        lineage: Which instance of each multi-instance ancestor it descends from (task name to
            index), which decides the predecessor combinations that are compatible (empty
            where no later task joins on it).

    Args:
        unique_name: As the attribute.
        task: As the attribute.
        config: As the attribute.
        config_hash: As the attribute; None: computed when first read, from the config and the
            predecessors' hashes (only for a config of scalars, which cannot change meanwhile).
        predecessors: As the attribute.
        lineage: As the attribute.
        shape: What the instances of its task share (``reduce``, and where their unique
            configs are built and kept): held per task, not per node.
    """

    # Eight slots: 96 bytes a node with the GC's header (each slot more is 8, a million times).
    __slots__ = (
        "_hash",
        "_shape",
        "config",
        "lineage",
        "predecessors",
        "successors",
        "task",
        "unique_name",
    )

    def __init__(
        self,
        unique_name: str,
        task: str,
        config: dict[str, Any],
        config_hash: str | None,
        predecessors: tuple[TaskNode, ...],
        lineage: Mapping[str, int],
        shape: _Shape,
    ) -> None:
        self.unique_name = unique_name
        self.task = task
        self.config = config
        self._hash = config_hash
        self.predecessors = predecessors
        self.successors: list[TaskNode] = []
        self.lineage = lineage
        self._shape = shape

    @property
    def reduce(self) -> bool:
        """Whether it receives every instance of its predecessors at once."""
        return self._shape.reduce

    @property
    def config_hash(self) -> str:
        """The digest of ``unique_config``: the instance's key in a store."""
        digest = self._hash
        if digest is None:
            digest = _hash_lazily(self)
        return digest

    @property
    def unique_config(self) -> dict[str, Any]:
        """The config that identifies the instance (built on first read, then kept)."""
        uniques = self._shape.uniques
        unique = uniques.get(self)
        if unique is None:
            unique = uniques[self] = self._shape.unique(self)
        return unique

    def __repr__(self) -> str:
        return f"TaskNode({self.unique_name!r}, config_hash={self.config_hash!r})"


def _hash_lazily(node: TaskNode) -> str:
    """``node``'s digest, and first those of its ancestors not hashed yet, in a loop: a chain
    of lazily hashed instances is deeper than the recursion limit."""
    stack = [node]
    while stack:
        top = stack[-1]
        if top._hash is not None:
            stack.pop()
            continue
        waiting = [p for p in top.predecessors if p._hash is None]
        if waiting:
            stack.extend(waiting)
            continue
        stack.pop()
        top._hash = top._shape.digest(top)
    assert node._hash is not None
    return node._hash


class _Shape:
    """What the instances of one task share: whether it reduces, how their unique_config is
    built, and those built so far (by node: a slot of each node would cost every node); and
    how a lazily hashed one's digest is computed."""

    __slots__ = ("_combo", "_suffix", "predecessors", "prefix", "reduce", "task", "uniques")

    def __init__(
        self, task: str, prefix: str | None, predecessors: list[str], reduce: bool
    ) -> None:
        self.task = task
        self.prefix = prefix
        self.predecessors = predecessors
        self.reduce = reduce
        self.uniques: dict[TaskNode, dict[str, Any]] = {}
        # The last predecessor combination hashed for, and its text: instances of one
        # combination come in a run (every instance of a fan-out has the same source).
        self._combo: tuple[TaskNode, ...] | None = None
        self._suffix = ""

    def digest(self, node: TaskNode) -> str:
        """``node``'s digest, its predecessors' hashed already: what expansion would compute."""
        combo = node.predecessors
        if combo is not self._combo:
            self._suffix = node_suffix(self.task, [(p.task, p.config_hash) for p in combo])
            self._combo = combo
        encoded = encoded_config(self.task, _identity(node.config, self.prefix))
        return node_digest(encoded, self._suffix)

    def unique(self, node: TaskNode) -> dict[str, Any]:
        unique = _plain_copy(node.config, self.prefix)
        if unique is None:
            unique = strip_ignored(node.config, self.prefix)
        combo = node.predecessors
        if self.reduce:
            for p in self.predecessors:
                unique[p] = [n.unique_config for n in combo if n.task == p]
        else:
            for pred in combo:
                unique[pred.task] = pred.unique_config
        return unique


@dataclass(frozen=True, slots=True)
class Binding:
    """How a spec's function is called: which predecessor results and whether ``ctx`` go in."""

    results: frozenset[str]  # predecessor names whose results the function takes
    ctx: str | None  # the parameter receiving the TaskContext
    is_async: bool


class Graph:
    """The expanded instances of a flow, in topological order (``.nodes``).

    Made by :meth:`Flow.graph`; iterating it yields the nodes, ``len()`` counts them.

    Args:
        flow: The flow it expands.
        nodes: Every :class:`TaskNode`, in topological order.
        specs: The specs by task name, in topological order.
        bindings: How each task's function is called, by task name.
    """

    __slots__ = ("bindings", "flow", "nodes", "specs")

    def __init__(
        self,
        flow: Flow,
        nodes: list[TaskNode],
        specs: dict[str, TaskSpec],
        bindings: dict[str, Binding],
    ) -> None:
        self.flow = flow
        self.nodes = nodes
        self.specs = specs
        self.bindings = bindings

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[TaskNode]:
        return iter(self.nodes)

    def by_task(self, task: str) -> list[TaskNode]:
        """The instances of one task, in topological order.

        Args:
            task: A task name (one that is not in the graph gives ``[]``).
        """
        return [node for node in self.nodes if node.task == task]

    @property
    def tasks(self) -> list[str]:
        """Task names in topological order."""
        return list(self.specs)

    def __repr__(self) -> str:
        return f"Graph({self.flow.name!r}, nodes={len(self.nodes)})"


def _is_ctx(param: inspect.Parameter) -> bool:
    if param.name == "ctx":
        return True
    annotation = param.annotation
    if isinstance(annotation, str):
        return annotation.rsplit(".", 1)[-1] == "TaskContext"
    return getattr(annotation, "__name__", None) == "TaskContext"


class _Callee:
    """What :func:`_bind` reads off a function's signature, read once per function (one
    function often serves many specs: the random DAG of the benchmark, 10,000)."""

    __slots__ = ("ctx", "is_async", "named", "params", "required", "var_kw")

    def __init__(self, fn: Any, signature: inspect.Signature) -> None:
        params = signature.parameters
        self.params = params
        self.var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
        self.named = {
            name: p
            for name, p in params.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
        self.ctx = next((name for name, p in self.named.items() if _is_ctx(p)), None)
        # Parameters without a default: a positional-only one cannot be filled, a named one
        # must be (its check needs the spec's keys and predecessors).
        self.required = [
            (name, p.kind is p.POSITIONAL_ONLY)
            for name, p in params.items()
            if p.default is p.empty and (p.kind is p.POSITIONAL_ONLY or name in self.named)
        ]
        self.is_async = is_async_callable(fn)


def _bind(spec: TaskSpec, predecessors: list[str], callees: dict[int, _Callee]) -> Binding:
    """Check that the function can take the spec's config and inputs; decide what to pass."""
    callee = callees.get(id(spec.fn))
    if callee is None:  # one function often serves many specs: read it once
        try:
            signature = inspect.signature(spec.fn)
        except (TypeError, ValueError) as exc:
            raise FlowError(f"cannot read the signature of task {spec.name!r}: {exc}") from exc
        callee = callees[id(spec.fn)] = _Callee(spec.fn, signature)
    named, var_kw, ctx = callee.named, callee.var_kw, callee.ctx
    keys = list(spec.config or {})
    for key in keys:
        if not isinstance(key, str):
            raise FlowError(f"config keys of task {spec.name!r} must be str, got {key!r}")
        if key in predecessors:
            raise FlowError(
                f"config key {key!r} of task {spec.name!r} is also the name of a predecessor"
            )
        if key == ctx or (key not in named and not var_kw):
            raise FlowError(f"task {spec.name!r} has no parameter for config key {key!r}")
    if callee.required:
        provided = set(keys) | set(predecessors) | ({ctx} if ctx else set())
        for name, positional_only in callee.required:
            if positional_only:
                raise FlowError(
                    f"task {spec.name!r}: positional-only parameter {name!r} cannot be filled"
                )
            if name not in provided:
                unused = [p for p in predecessors if p not in named and not var_kw]
                raise FlowError(_unfilled(spec.name, name, keys, predecessors, unused))
    results = frozenset(p for p in predecessors if p in named or var_kw)
    return Binding(results=results, ctx=ctx, is_async=callee.is_async)


def _unfilled(
    task: str, param: str, keys: list[str], predecessors: list[str], unused: list[str]
) -> str:
    """Why ``param`` of ``task`` gets no value, and what there is to give it one: the usual
    slip is a parameter named for the data (``data``) where a predecessor's result comes
    under the predecessor's task name (``load``); ``unused`` are the predecessors no
    parameter takes."""
    config = ", ".join(repr(k) for k in keys) if keys else "none"
    message = (
        f"task {task!r}: nothing provides parameter {param!r} (not a config key, a "
        f"predecessor's name or ctx); config keys: {config}"
    )
    if not predecessors:
        return f"{message}; it has no predecessors (requires=[...] adds them)"
    if not unused:
        taken = ", ".join(repr(p) for p in predecessors)
        return f"{message}; predecessor results ({taken}) go to the parameters of those names"
    names = ", ".join(repr(p) for p in unused)
    verb = "is" if len(unused) == 1 else "are"
    results = "the result" if len(unused) == 1 else "the results"
    return f"{message}; {results} of {names} {verb} passed as {names}, which no parameter takes"


def _order(flow: Flow) -> tuple[dict[str, TaskSpec], dict[str, list[str]]]:
    """Specs in topological order, and each one's predecessor names."""
    specs = {spec.name: spec for spec in flow.specs}
    preds: dict[str, list[str]] = {}
    for spec in specs.values():
        names = spec.predecessors
        for name in names:
            if name not in specs:
                raise FlowError(f"task {spec.name!r} requires unknown task {name!r}")
        if spec.name in names:
            raise FlowError(f"task {spec.name!r} requires itself")
        preds[spec.name] = names
    try:
        order = list(graphlib.TopologicalSorter(preds).static_order())
    except graphlib.CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        raise FlowError(f"the tasks form a cycle: {cycle}") from None
    return {name: specs[name] for name in order}, preds


def _combinations(
    groups: list[list[TaskNode]],
) -> list[tuple[tuple[TaskNode, ...], Mapping[str, int]]]:
    """Compatible picks of one instance per predecessor, with their merged lineage."""
    first = groups[0]
    if all(len(group) == 1 for group in groups):  # single instances (a plain DAG): no join
        return _single_combination([group[0] for group in groups])
    combos: list[tuple[tuple[TaskNode, ...], Mapping[str, int]]] = [
        ((node,), node.lineage) for node in first
    ]
    for group in groups[1:]:
        shared = [k for k in group[0].lineage if k in combos[0][1]] if combos else []
        index: dict[tuple[int, ...], list[TaskNode]] = {}
        for node in group:
            index.setdefault(tuple(node.lineage[k] for k in shared), []).append(node)
        joined: list[tuple[tuple[TaskNode, ...], Mapping[str, int]]] = []
        for nodes, lineage in combos:
            for node in index.get(tuple(lineage[k] for k in shared), ()):
                merged = lineage if not node.lineage else {**lineage, **node.lineage}
                joined.append(((*nodes, node), merged))
        combos = joined
    return combos


def _single_combination(
    picks: list[TaskNode],
) -> list[tuple[tuple[TaskNode, ...], Mapping[str, int]]]:
    """:func:`_combinations` of one instance per predecessor: them, if they descend from the
    same instance of every ancestor they share (else no combination at all)."""
    lineage = picks[0].lineage
    for node in picks[1:]:
        if not node.lineage:
            continue
        for key, index in node.lineage.items():
            if lineage.get(key, index) != index:
                return []
        lineage = {**lineage, **node.lineage}
    return [(tuple(picks), lineage)]


def _plain_copy(config: dict[str, Any], prefix: str | None) -> dict[str, Any] | None:
    """``strip_ignored(config, prefix)`` for a config of scalars with no ignored key (a
    reduce over a million instances reads as many unique configs), else None. The keys are
    str: :func:`_bind` checked them."""
    for key, value in config.items():
        kind = type(value)
        if not (kind is int or kind is str or kind is float or kind is bool or value is None):
            return None
        if prefix is not None and key.startswith(prefix):
            return None
    return dict(config)


def _identity(config: dict[str, Any], prefix: str | None) -> Mapping[str, Any]:
    """The config without ignored keys, for its hash only: the config itself when no key at
    any depth is ignored (the common case, and no copy per instance then)."""
    if prefix is None or not _has_ignored(config, prefix):
        return config
    return strip_ignored(config, prefix)


def _has_ignored(value: Any, prefix: str) -> bool:
    if type(value) is dict or isinstance(value, Mapping):  # the ABC test is slow: dicts first
        for key, item in value.items():
            if isinstance(key, str) and key.startswith(prefix):
                return True
            if type(item) is not int and type(item) is not str and _has_ignored(item, prefix):
                return True
        return False
    if type(value) is list or type(value) is tuple:
        return any(_has_ignored(item, prefix) for item in value)
    return False


def build_graph(flow: Flow) -> Graph:
    """Expand every spec of ``flow``; raises FlowError for anything declared wrongly.

    The cyclic garbage collector is paused meanwhile: expansion makes no garbage cycles, but
    each full collection walks every node made so far, which was a quarter of the time of
    building a million (and the nodes are all alive until the graph is dropped)."""
    with gc_paused():
        return _build(flow)


def _lazy_instances(
    name: str,
    configs: list[dict[str, Any]],
    combos: list[tuple[tuple[TaskNode, ...], Mapping[str, int]]],
    keep_lineage: bool,
    shape: _Shape,
) -> list[TaskNode]:
    """The instances of a flat grid (:func:`flat_grid`: distinct configs of scalars), their
    hashes left for later. One predecessor combination (a fan-out, a reduce, a source) is a
    list comprehension and one ``extend`` per predecessor."""
    multi = len(configs) > 1
    if len(combos) == 1 and not (keep_lineage and multi):
        combo, lineage = combos[0]
        if not keep_lineage:
            lineage = _NO_LINEAGE
        own = [
            TaskNode(f"{name}-{k}", name, config, None, combo, lineage, shape)
            for k, config in enumerate(configs, 1)
        ]
        for pred in combo:  # each gets them in the order node-by-node appends would give
            pred.successors.extend(own)
        return own
    return _instances(name, configs, combos, keep_lineage, shape, hashed=False)


def _instances(
    name: str,
    configs: list[dict[str, Any]],
    combos: list[tuple[tuple[TaskNode, ...], Mapping[str, int]]],
    keep_lineage: bool,
    shape: _Shape,
    *,
    hashed: bool = True,
) -> list[TaskNode]:
    """Every (config, predecessor combination) instance, node by node. ``hashed``: each is
    hashed as it is made, as the instances of any grid but a flat one must be (the check that
    no two are the same instance needs the digests); a flat grid's are hashed when read."""
    hashers = (
        [node_hasher(name, [(p.task, p.config_hash) for p in c]) for c, _ in combos]
        if hashed
        else None
    )
    multi = len(configs) > 1
    seen: set[str] = set()
    prefix = shape.prefix
    own: list[TaskNode] = []
    for i, config in enumerate(configs):
        encoded = encoded_config(name, _identity(config, prefix)) if hashers is not None else ""
        for j, (combo, lineage) in enumerate(combos):
            digest: str | None = None
            if hashers is not None:
                digest = hashers[j](encoded)
                if digest in seen:
                    raise FlowError(
                        f"task {name!r} expands to the same instance twice (config {config!r}); "
                        "remove the repeated alternative"
                    )
                seen.add(digest)
            if not keep_lineage:
                lineage = _NO_LINEAGE
            elif multi:
                lineage = {**lineage, name: i}
            node = TaskNode(f"{name}-{len(own) + 1}", name, config, digest, combo, lineage, shape)
            for pred in combo:
                pred.successors.append(node)
            own.append(node)
    return own


def _build(flow: Flow) -> Graph:
    specs, preds = _order(flow)
    callees: dict[int, _Callee] = {}
    bindings = {name: _bind(spec, preds[name], callees) for name, spec in specs.items()}
    instances: dict[str, list[TaskNode]] = {}
    nodes: list[TaskNode] = []
    prefix = flow.config_ignore_prefix
    strip_ignored({}, prefix)  # checks the prefix once, for _identity
    # Tasks some later task joins on (not a reduce): only their instances need a lineage.
    joined = {p for name, spec in specs.items() if not spec.reduce for p in preds[name]}
    for name, spec in specs.items():
        # A flat grid of scalars: expanded by itertools.product, its instances hashed when
        # first read (never, in a run without a store).
        flat = flat_grid(spec.config, spec.expand, flow.group_prefix, prefix)
        pred_names = preds[name]
        if spec.reduce or not pred_names:
            gathered = tuple(n for p in pred_names for n in instances[p])
            combos: list[tuple[tuple[TaskNode, ...], Mapping[str, int]]] = [(gathered, {})]
        else:
            combos = _combinations([instances[p] for p in pred_names])
        keep_lineage = name in joined
        shape = _Shape(name, prefix, pred_names, spec.reduce)
        if flat is not None:
            own = _lazy_instances(name, flat, combos, keep_lineage, shape)
        else:
            configs = expand_config(spec.config, spec.expand, flow.group_prefix)
            own = _instances(name, configs, combos, keep_lineage, shape)
        instances[name] = own
        nodes.extend(own)
    return Graph(flow, nodes, specs, bindings)
