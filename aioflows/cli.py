"""The ``aioflows`` command line: ``run`` a flow, print its ``graph``, ``show`` stored records.

Exit status: 0 success, 1 the flow ran and some instances failed, 2 a usage error (bad option,
missing file or object, not a Flow, a flow declared wrongly, an unreadable store) or an error
raised by the user's module while it was imported, 130 interrupted (Ctrl-C), 141 stdout closed
early (piped into ``head``). A usage error is
one line on stderr, ``aioflows: error: <reason>``, never a traceback; an error in the user's
own code shows its traceback, which points at the line to fix. See docs/cli.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib
import importlib.util
import inspect
import logging
import os
import re
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import datetime, timezone
from types import ModuleType
from typing import Any, NoReturn

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from ._display import isatty
from ._text import first_line, printable, shorten
from ._version import __version__
from .errors import AioflowsError, EndpointLoadFailed, FlowError, FlowFailed
from .flow import runlog
from .flow.cache import RESULT_NAME
from .flow.executor import select
from .flow.progress import STYLES, FlowProgress, format_seconds, summary_table
from .flow.render import config_summary
from .flow.run import FlowRun, TaskEvent
from .flow.spec import Flow
from .stores.base import check_part
from .stores.local import LocalFileStore
from .stores.records import TaskInfo, TaskState

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "main",
]

EXIT_OK = 0
EXIT_FAILED = 1  # the flow ran and some task instances failed
EXIT_USAGE = 2  # bad arguments, nothing to run, or the user's module failed to import
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_BROKEN_PIPE = 141  # whoever read stdout stopped reading (128 + SIGPIPE)

DEFAULT_STORE = ".aioflows"
DEFAULT_OBJECT = "flow"
DEFAULT_SERVER = "server"
_MAX_FAILURES = 20  # failed instances listed after a failed run
_ERROR_WIDTH = 300  # characters of an error message on one line
_SHOW_ERROR_WIDTH = 60  # characters of an error in the `show` table
_HASH_WIDTH = 10  # characters of a config_hash in the `show` table
_SHOW_ERROR_COLUMNS = 100  # narrower consoles list errors below the `show` table
_CONFIG_WIDTH = 32  # characters of a config in the `show` table
_VALUE_WIDTH = 24  # characters of a value in the `show` table
_MAX_VALUES = 2000  # more finished records than this: `show` loads no values


class _UsageError(Exception):
    """A mistake on the command line or in what it names: one line, exit 2."""


class _UserCodeError(Exception):
    """The user's own code raised while being loaded: its traceback, then one line, exit 2."""

    def __init__(self, message: str, error: BaseException) -> None:
        super().__init__(message)
        self.error = error


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"aioflows: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return value


def _store_option(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--store", metavar="DIR", default=DEFAULT_STORE, help=help)


def _parser() -> _Parser:
    parser = _Parser(
        prog="aioflows",
        description=(
            "Run many async things well: rate-limited concurrent calls, task graphs, "
            "streaming pipelines, resumable batch jobs."
        ),
        epilog="Run 'aioflows COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"aioflows {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    target_help = (
        "a Python file (path/to/flows.py) or a module name (pkg.flows), optionally followed by "
        f":NAME, the Flow object or zero-argument function returning one (default: "
        f"{DEFAULT_OBJECT})"
    )

    run = commands.add_parser(
        "run",
        help="run a flow, store its results and print a summary",
        description=(
            "Run a flow with a LocalFileStore: instances finished in an earlier run are loaded "
            "from the store (cached), the rest run. Prints a summary table."
        ),
    )
    run.add_argument("target", metavar="FILE_OR_MODULE[:OBJECT]", help=target_help)
    _store_option(run, f"where results and task records are kept (default: ./{DEFAULT_STORE})")
    run.add_argument(
        "--concurrency",
        metavar="N",
        type=_positive_int,
        default=None,
        help="run at most N task instances at once (default: no limit)",
    )
    run.add_argument(
        "--force",
        metavar="NAME[+]",
        action="append",
        default=None,
        help=(
            "run task NAME again even if its results are stored; NAME+ also forces every task "
            "downstream of it, 'all' forces everything (repeatable)"
        ),
    )
    run.add_argument(
        "--target",
        metavar="NAME",
        action="append",
        dest="targets",
        default=None,
        help="run only task NAME's instances and what they need (repeatable)",
    )
    run.add_argument(
        "--keep-going",
        action="store_true",
        help=(
            "after a failure, let the instances that do not depend on it run on "
            "(default: stop the run at the first failure)"
        ),
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a live progress display on stderr (default: when stderr is a terminal)",
    )
    run.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print the full traceback of each failed instance and the tasks' log (ctx.logger) "
        "at INFO on stderr",
    )
    run.set_defaults(handler=_cmd_run)

    graph = commands.add_parser(
        "graph",
        help="print a flow's expanded graph",
        description="Print the task instances of a flow and their dependencies; runs nothing.",
    )
    graph.add_argument("target", metavar="FILE_OR_MODULE[:OBJECT]", help=target_help)
    graph.add_argument(
        "--format",
        choices=("text", "mermaid", "dot"),
        default="text",
        help="text (for the terminal, the default), mermaid (a flowchart) or dot (Graphviz)",
    )
    graph.set_defaults(handler=_cmd_graph)

    show = commands.add_parser(
        "show",
        help="list the task records in a store",
        description="List the stored record of every task instance (or of one task's).",
    )
    show.add_argument("task", metavar="TASK", nargs="?", default=None, help="only this task")
    _store_option(show, f"the store to read (default: ./{DEFAULT_STORE})")
    show.add_argument(
        "--last",
        action="store_true",
        help="only the records of the instances of the last 'aioflows run' on this store",
    )
    show.set_defaults(handler=_cmd_show)

    report = commands.add_parser(
        "report",
        help="write an HTML page of the last run",
        description=(
            "Write one self-contained HTML file (no network needed to view it) describing the "
            "last 'aioflows run' on the store: state counts per task, a timeline of the "
            "instances, the graph, each failure's traceback and each instance's config."
        ),
    )
    _store_option(report, f"the store to read (default: ./{DEFAULT_STORE})")
    report.add_argument(
        "-o",
        "--output",
        metavar="FILE.html",
        default="run.html",
        help="where to write the page (default: %(default)s)",
    )
    report.set_defaults(handler=_cmd_report)

    serve = commands.add_parser(
        "serve",
        help="serve an af.Server over HTTP with uvicorn",
        description=(
            "Load every endpoint of an af.Server (a failing load exits non-zero, naming the "
            "endpoint), then serve its routes until Ctrl-C or SIGTERM, and drain."
        ),
    )
    serve.add_argument(
        "target",
        metavar="FILE_OR_MODULE[:OBJECT]",
        help=(
            "a Python file or a module name, optionally followed by :NAME, the af.Server "
            f"object (default: {DEFAULT_SERVER})"
        ),
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    serve.add_argument(
        "--port", type=_port, default=8000, help="port to listen on (default: %(default)s)"
    )
    serve.set_defaults(handler=_cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aioflows`` console script; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stdout)
        return EXIT_OK
    try:
        status: int = args.handler(args)
    except _UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except _UserCodeError as exc:
        _print_user_traceback(exc.error)
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`aioflows graph f.py | head`): stop writing, quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return status


# --- output helpers ----------------------------------------------------------------------------


def _error(message: str) -> None:
    sys.stderr.write(f"aioflows: error: {first_line(message, _ERROR_WIDTH)}\n")
    sys.stderr.flush()


def _stdout_console() -> Console:
    """A console on stdout; piped output gets room for a whole table row on one line."""
    width = None if isatty(sys.stdout) or "COLUMNS" in os.environ else 160
    return Console(file=sys.stdout, highlight=False, width=width)


def _print_user_traceback(error: BaseException) -> None:
    sys.stderr.write(runlog.user_traceback(error))


# --- loading a flow ----------------------------------------------------------------------------


def _split_target(target: str, default: str = DEFAULT_OBJECT) -> tuple[str, str]:
    """``"path/flows.py:demo"`` -> ``("path/flows.py", "demo")``; the object defaults to
    ``default``. A colon followed by a path (``C:\\flows.py``) is part of the path."""
    head, sep, tail = target.rpartition(":")
    if not sep or not head or any(c in tail for c in "/\\"):
        return target, default
    if not all(part.isidentifier() for part in tail.split(".")):
        raise _UsageError(f"{tail!r} in {target!r} is not a Python name (expected FILE:NAME)")
    return head, tail


def _looks_like_path(source: str) -> bool:
    return (
        source.endswith(".py")
        or "/" in source
        or os.sep in source
        or (os.altsep is not None and os.altsep in source)
        or os.path.isfile(source)
    )


def _import_file(source: str) -> ModuleType:
    path = os.path.abspath(source)
    if not os.path.exists(path):
        raise _UsageError(f"no such file: {source}")
    if not os.path.isfile(path):
        raise _UsageError(f"{source} is not a file")
    # The module name is the same for the same file in every run, so objects pickled from
    # one run (non-JSON results) load in the next.
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    digest = hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    name = f"_aioflows_file_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise _UsageError(f"{source} is not a Python file (expected a .py file)")
    module = importlib.util.module_from_spec(spec)
    # Like `python file.py`: the file's directory is importable, so sibling modules are.
    directory = os.path.dirname(path)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise _UserCodeError(f"importing {source} failed (traceback above)", exc) from exc
    return module


def _import_module(source: str) -> ModuleType:
    if not all(part.isidentifier() for part in source.split(".")):
        raise _UsageError(f"{source!r} is neither a Python file nor a module name")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        spec = importlib.util.find_spec(source)
    except ModuleNotFoundError as exc:
        # A missing parent package is a usage error; a module its __init__ imports is not.
        missing = exc.name or ""
        if missing and (source == missing or source.startswith(missing + ".")):
            raise _UsageError(f"no module named {source!r} (nor a file of that name)") from exc
        raise _UserCodeError(f"importing {source} failed (traceback above)", exc) from exc
    except Exception as exc:
        raise _UserCodeError(f"importing {source} failed (traceback above)", exc) from exc
    if spec is None:
        raise _UsageError(f"no module named {source!r} (nor a file of that name)")
    try:
        return importlib.import_module(source)
    except Exception as exc:
        raise _UserCodeError(f"importing {source} failed (traceback above)", exc) from exc


def _lookup(module: ModuleType, name: str, source: str) -> Any:
    obj: Any = module
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            flows = sorted(k for k, v in vars(module).items() if isinstance(v, Flow))
            hint = f"; Flow objects there: {', '.join(flows)}" if flows else ""
            raise _UsageError(f"{source} has no object {name!r}{hint}") from None
    return obj


def _as_flow(obj: Any, label: str) -> Flow:
    if isinstance(obj, Flow):
        return obj
    if not callable(obj):
        raise _UsageError(f"{label} is not an aioflows Flow (it is a {type(obj).__name__})")
    try:
        inspect.signature(obj).bind()
    except TypeError:
        raise _UsageError(
            f"{label} is neither a Flow nor a function that returns one without arguments"
        ) from None
    except ValueError:
        pass  # no signature to check (a builtin): just call it
    try:
        result = obj()
    except Exception as exc:
        raise _UserCodeError(f"calling {label}() failed (traceback above)", exc) from exc
    if isinstance(result, Flow):
        return result
    if inspect.iscoroutine(result):
        result.close()
        raise _UsageError(f"{label} is async; give a Flow or a plain function returning one")
    raise _UsageError(
        f"{label}() did not return an aioflows Flow (it returned a {type(result).__name__})"
    )


def _load_flow(target: str) -> Flow:
    source, name = _split_target(target)
    module = _import_file(source) if _looks_like_path(source) else _import_module(source)
    return _as_flow(_lookup(module, name, source), f"{source}:{name}")


# --- run -------------------------------------------------------------------------------------


def _check_store_dir(store: str) -> None:
    if os.path.exists(store) and not os.path.isdir(store):
        raise _UsageError(f"--store {store}: not a directory")


class _Recorder:
    """When each instance reached its final state (from the run's events), for the last-run
    record; and the progress display's listener, if there is one."""

    def __init__(self, display: FlowProgress | None = None) -> None:
        self.settled: dict[str, datetime] = {}
        self.display = display

    def __call__(self, event: TaskEvent) -> None:
        if event.state.done:
            self.settled[event.unique_name] = event.time
        if self.display is not None:
            self.display.update(event)


async def _run(
    flow: Flow, store: LocalFileStore, args: argparse.Namespace, progress: bool
) -> tuple[FlowRun, dict[str, datetime], FlowFailed | None]:
    options: dict[str, Any] = {
        "store": store,
        "concurrency": args.concurrency,
        "force": args.force,
        "fail_fast": not args.keep_going,
        "targets": args.targets,
    }
    if not progress:
        recorder = _Recorder()
        try:
            return await flow.run(**options, on_event=recorder), recorder.settled, None
        except FlowFailed as exc:
            return exc.run, recorder.settled, exc
    # The display is driven from here rather than with run(progress=True) so that its summary
    # table goes to stdout with the rest of the output instead of under the display.
    nodes = select(flow.graph(), args.targets)
    async with FlowProgress(flow.name, nodes, summary=False) as display:
        recorder = _Recorder(display)
        try:
            run = await flow.run(**options, on_event=recorder)
        except FlowFailed as exc:
            display.finish(exc.run)
            return exc.run, recorder.settled, exc
        display.finish(run)
        return run, recorder.settled, None


class _TaskLogHandler(logging.Handler):
    """Task loggers' records on stderr, ``HH:MM:SS train-3: message``.

    It looks ``sys.stderr`` up for each record, not once, so that lines go through the progress
    display's redirection while it draws (they appear above it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            when = time.strftime("%H:%M:%S", time.localtime(record.created))
            who = getattr(record, "unique_name", None) or record.name
            text = f"{when} {who}: {record.getMessage()}"
            if record.exc_info:
                text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            sys.stderr.write(text + "\n")
        except Exception:
            self.handleError(record)


def _verbose_logging() -> None:
    logger = logging.getLogger("aioflows.flow")
    logger.setLevel(logging.INFO)
    logger.addHandler(_TaskLogHandler())
    logger.propagate = False  # not twice through a handler the user's module set on root


def _status_line(run: FlowRun, seconds: float) -> Text:
    """``flow demo: ok, 10 instances (7 finished, 3 cached) in 0.04 s``."""
    counts: dict[str, int] = {}
    for state in run.states.values():
        # Instances a failure stopped before they started did not run: say so, as the table.
        name = "not_run" if state in (TaskState.PENDING, TaskState.SCHEDULED) else state.value
        counts[name] = counts.get(name, 0) + 1
    order = [s.value for s in STYLES if s not in (TaskState.PENDING, TaskState.SCHEDULED)]
    parts = [f"{counts[name]} {name}" for name in [*order, "not_run"] if counts.get(name)]
    total = len(run.states)
    outcome = "ok" if run.ok else "failed"
    text = Text(f"flow {run.graph.flow.name}: {outcome}, ")
    text.append(f"{total} instance{'' if total == 1 else 's'}")
    if parts:
        text.append(f" ({', '.join(parts)})")
    text.append(f" in {format_seconds(seconds)}")
    return text


def _cmd_run(args: argparse.Namespace) -> int:
    flow = _load_flow(args.target)
    _check_store_dir(args.store)
    store = LocalFileStore(args.store)
    progress = args.progress if args.progress is not None else isatty(sys.stderr)
    if args.verbose:
        _verbose_logging()
    started = time.monotonic()
    started_at = datetime.now(timezone.utc)
    try:
        run, settled, failure = asyncio.run(_run(flow, store, args, progress))
    except AioflowsError as exc:  # FlowError and the like: nothing ran
        raise _UsageError(str(exc)) from exc
    record = runlog.build(
        run,
        started=started_at,
        ended=datetime.now(timezone.utc),
        settled=settled,
        target=args.target,
    )
    try:
        runlog.write_last(args.store, record)
    except OSError as exc:
        _error(f"cannot write the run record in {args.store}: {exc.strerror or exc}")
    console = _stdout_console()
    console.print(summary_table(run))
    console.print(_status_line(run, time.monotonic() - started))
    if failure is None:
        return EXIT_OK
    sys.stdout.flush()
    errors = list(failure.errors.items())
    for name, error in errors[:_MAX_FAILURES]:
        if args.verbose:
            sys.stderr.write(f"--- {name} failed:\n")
            sys.stderr.write(runlog.user_traceback(error))
        else:
            line = first_line(f"{name}: {type(error).__name__}: {error}", _ERROR_WIDTH)
            sys.stderr.write(line + "\n")
    if len(errors) > _MAX_FAILURES:
        sys.stderr.write(
            f"... and {len(errors) - _MAX_FAILURES} more failed instances "
            f"(aioflows show --store {args.store})\n"
        )
    elif not args.verbose:
        sys.stderr.write("(-v shows their tracebacks; aioflows report draws the run)\n")
    return EXIT_FAILED


# --- graph -------------------------------------------------------------------------------------


def _cmd_graph(args: argparse.Namespace) -> int:
    flow = _load_flow(args.target)
    try:
        graph = flow.graph()
    except FlowError as exc:
        raise _UsageError(str(exc)) from exc
    from .flow import render

    renderers = {"text": render.to_text, "mermaid": render.to_mermaid, "dot": render.to_dot}
    sys.stdout.write(renderers[args.format](graph))
    sys.stdout.flush()
    return EXIT_OK


# --- show --------------------------------------------------------------------------------------


def _natural(text: str) -> tuple[Any, ...]:
    """``train-10`` after ``train-9``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def _local_time(info: TaskInfo) -> str:
    if info.started is None:
        return "-"
    return info.started.astimezone().strftime("%Y-%m-%d %H:%M")


def _short_value(value: Any) -> str:
    text = repr(value)
    return shorten(
        printable(text if len(text) < 4 * _VALUE_WIDTH else text[: 4 * _VALUE_WIDTH]), _VALUE_WIDTH
    )


async def _show_data(
    store: LocalFileStore, task: str | None
) -> tuple[list[TaskInfo], set[tuple[str, str]], dict[tuple[str, str], str]]:
    """The records to list (of ``task``, or all), the stale ones (judged against every
    record), and the values of the finished ones (cut short)."""
    if task is not None:
        check_part("task", task)  # a name that cannot be a task's is an error, not no records
    every = await store.list_infos()
    stale = runlog.stale_keys(every)
    infos = [i for i in every if task is None or i.task == task]
    values: dict[tuple[str, str], str] = {}
    finished = [i for i in infos if i.state is TaskState.FINISHED]
    if len(finished) <= _MAX_VALUES:
        for info in finished:
            try:
                value = await store.load(RESULT_NAME, task=info.task, config_hash=info.config_hash)
            except Exception:
                # A result gone (the next run computes it again), or a pickle whose class this
                # process cannot import (defined in the flow's module): a listing has no value.
                continue
            values[info.task, info.config_hash] = _short_value(value)
    return infos, stale, values


def _cmd_show(args: argparse.Namespace) -> int:
    store = LocalFileStore(args.store)
    try:
        last = runlog.read_last(args.store)
        infos, stale, values = asyncio.run(_show_data(store, args.task))
    except (AioflowsError, ValueError) as exc:  # a corrupt record, a bad task name
        raise _UsageError(str(exc)) from exc
    except OSError as exc:
        raise _UsageError(f"cannot read {args.store}: {exc.strerror or exc}") from exc
    in_last = (
        {(i["task"], i["config_hash"]) for i in last["instances"]} if last is not None else set()
    )
    if args.last:
        infos = [i for i in infos if (i.task, i.config_hash) in in_last]
    console = _stdout_console()
    if not infos:
        what = f"of task {args.task!r} " if args.task is not None else ""
        which = "of the last run " if args.last else ""
        console.print(Text(f"no task records {what}{which}in {args.store}"))
        return EXIT_OK
    # Tasks in the last run's order (the flow's), then any others; its records first.
    order = {t: n for n, t in enumerate(last["tasks"])} if last is not None else {}
    infos.sort(
        key=lambda i: (
            order.get(i.task, len(order)),
            i.task,
            (i.task, i.config_hash) not in in_last,
            _natural(i.unique_name),
            i.config_hash,
        )
    )
    records = "record" if len(infos) == 1 else "records"
    table = Table(
        title=Text(f"{len(infos)} task {records} in {args.store}"),
        box=None,  # plain columns (as `ls -l`)
        pad_edge=False,
        title_justify="left",
    )
    table.add_column("task", no_wrap=True)
    table.add_column("unique_name", no_wrap=True)
    table.add_column("config_hash", no_wrap=True)
    table.add_column("run", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("attempts", justify="right", no_wrap=True)
    table.add_column("started", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("config", no_wrap=True, overflow="ellipsis", max_width=_CONFIG_WIDTH)
    table.add_column("value", no_wrap=True, overflow="ellipsis", max_width=_VALUE_WIDTH)
    failed = [info for info in infos if info.error]
    # Errors get a column when there is room for it, else a line each below the table.
    errors = bool(failed) and console.width >= _SHOW_ERROR_COLUMNS
    if errors:
        table.add_column("error")
    for info in infos:
        key = (info.task, info.config_hash)
        state = Text(info.state.value, style=STYLES.get(info.state, ""))
        if key in stale:
            state.append(" stale", style="bold yellow")
        cells: list[RenderableType] = [
            Text(info.task),
            Text(info.unique_name),
            Text(info.config_hash[:_HASH_WIDTH]),
            Text("last" if key in in_last else "older", style="" if key in in_last else "dim"),
            state,
            str(info.attempts),
            _local_time(info),
            format_seconds(info.duration),
            Text(config_summary(info.config or {}, _CONFIG_WIDTH)),
            Text(values.get(key, "")),
        ]
        if errors:
            cells.append(Text(first_line(info.error, _SHOW_ERROR_WIDTH) if info.error else ""))
        table.add_row(*cells)
    console.print(table)
    if failed and not errors:
        for info in failed:
            console.print(Text(first_line(f"{info.unique_name}: {info.error}", console.width)))
    if last is not None:
        console.print(
            Text(
                f"run: last = an instance of the last run (flow {last['flow']}, run "
                f"{last['run_id']}), older = left by an earlier run",
                style="dim",
            )
        )
    if any((i.task, i.config_hash) in stale for i in infos):
        console.print(
            Text(
                "stale: computed from a predecessor's result that was computed again since; "
                "the next run runs it again",
                style="dim",
            )
        )
    return EXIT_OK


# --- report ----------------------------------------------------------------------------------


def _cmd_report(args: argparse.Namespace) -> int:
    from .flow.report import render_html

    try:
        last = runlog.read_last(args.store)
    except ValueError as exc:
        raise _UsageError(str(exc)) from exc
    except OSError as exc:
        raise _UsageError(f"cannot read {args.store}: {exc.strerror or exc}") from exc
    if last is None:
        raise _UsageError(f"no run recorded in {args.store} (run one with 'aioflows run')")
    page = render_html(last)
    try:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(page)
    except OSError as exc:
        raise _UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
    count = len(last["instances"])
    sys.stdout.write(
        f"wrote {args.output}: flow {last['flow']}, run {last['run_id']}, {count} instances\n"
    )
    return EXIT_OK


# --- serve -----------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serving import Server

    source, name = _split_target(args.target, DEFAULT_SERVER)
    module = _import_file(source) if _looks_like_path(source) else _import_module(source)
    server = _lookup(module, name, source)
    if not isinstance(server, Server):
        raise _UsageError(f"{source}:{name} is not an af.Server (it is a {type(server).__name__})")
    try:
        import uvicorn
    except ImportError:
        raise _UsageError("aioflows serve needs uvicorn: pip install 'aioflows[server]'") from None
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every keep-alive response waits out the client's delayed ACK (40 ms).
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((args.host, args.port))
    except OSError as exc:
        listener.close()
        raise _UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    try:
        asyncio.run(_serve(server, listener, uvicorn))
    finally:
        listener.close()
    return EXIT_OK


async def _serve(server: Any, listener: socket.socket, uvicorn: Any) -> None:
    """Load and start ``server``, serve until uvicorn is told to stop, then drain.

    The server is entered here rather than by the app's lifespan (off), so that a failing
    ``load`` is one clear error rather than uvicorn's startup traceback, and so that the
    requests still running when uvicorn stops get the server's ``drain_timeout``.
    """
    try:
        async with server:
            host, port = listener.getsockname()[:2]
            sys.stderr.write(
                f"aioflows: serving {', '.join(server.runners) or 'no endpoints'} "
                f"on http://{host}:{port}\n"
            )
            config = uvicorn.Config(
                server.asgi(),
                lifespan="off",
                log_level="info",
                timeout_graceful_shutdown=server.drain_timeout,
            )
            await uvicorn.Server(config).serve(sockets=[listener])
    except EndpointLoadFailed as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise _UserCodeError(str(exc), cause) from exc


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
