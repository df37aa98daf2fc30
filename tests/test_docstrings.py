"""Every public name of aioflows has a docstring that documents each of its parameters.

"Public" is whatever ``aioflows.__all__`` holds at the time, plus the public methods and
properties of its classes (those defined in aioflows, inherited from aioflows bases included),
so names added later are checked without editing this file. A parameter is documented when its
name starts an entry of the Google-style ``Args:`` section (for a class: of the class docstring
or of ``__init__``'s; ``Attributes:`` counts for the fields of a dataclass or pydantic model),
as mkdocstrings renders it. An ``Args:`` entry that names no parameter fails too: it is stale.

Run as ``python -m tests.test_docstrings`` to list every problem at once.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any

import pydantic
import pytest

import aioflows

_SECTION = re.compile(
    r"^(?P<indent>[ \t]*)(?P<title>Args|Arguments|Parameters|Keyword Args|Attributes):[ \t]*$"
)
_ENTRY = re.compile(r"^(?P<name>\*{0,2}[A-Za-z_][A-Za-z0-9_]*)(?:[ \t]*\([^)]*\))?:(?:\s|$)")
_PARAM_SECTIONS = {"Args", "Arguments", "Parameters", "Keyword Args"}
PUBLIC = [name for name in aioflows.__all__ if name != "__version__"]


def documented_names(doc: str, sections: set[str]) -> list[str]:
    """The names that start an entry of the given sections of a Google-style docstring."""
    names: list[str] = []
    lines = inspect.cleandoc(doc).splitlines()
    i = 0
    while i < len(lines):
        match = _SECTION.match(lines[i])
        i += 1
        if match is None or match["title"] not in sections:
            continue
        base = len(match["indent"])
        entry_indent: int | None = None
        while i < len(lines):
            line = lines[i]
            if line.strip():
                indent = len(line) - len(line.lstrip())
                if indent <= base:
                    break
                if entry_indent is None:
                    entry_indent = indent
                if indent == entry_indent:
                    entry = _ENTRY.match(line.strip())
                    if entry is not None:
                        names.append(entry["name"].lstrip("*"))
            i += 1
    return names


def _params(fn: Callable[..., Any], *, bound: bool) -> list[str]:
    """The parameter names of ``fn`` a caller passes (``self``/``cls`` left out)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    names = list(signature.parameters)
    if bound and names and names[0] in ("self", "cls"):
        names = names[1:]
    return names


def _own(cls: type) -> list[type]:
    """``cls`` and its bases that aioflows defines (not object, Exception, BaseModel...)."""
    return [base for base in cls.__mro__ if base.__module__.split(".")[0] == "aioflows"]


def _constructor(cls: type) -> tuple[list[str], list[str]]:
    """The constructor's parameters, and the docstrings that may document them."""
    docs = [cls.__doc__ or ""]
    if issubclass(cls, enum.Enum):
        return [], docs
    if issubclass(cls, pydantic.BaseModel) or dataclasses.is_dataclass(cls):
        return _params(cls, bound=False), docs
    for base in cls.__mro__:
        if "__init__" in vars(base):
            if base not in _own(cls):
                return [], docs  # object's or Exception's: nothing of ours to document
            docs.append(vars(base)["__init__"].__doc__ or "")
            return _params(vars(base)["__init__"], bound=True), docs
    return [], docs


def _members(cls: type) -> Iterator[tuple[str, Callable[..., Any] | property, bool]]:
    """Public methods and properties of ``cls`` defined in aioflows: (name, member, bound)."""
    seen: set[str] = set()
    for base in _own(cls):
        for attr, raw in vars(base).items():
            if attr in seen or (attr.startswith("_") and attr != "__call__"):
                continue
            seen.add(attr)
            if isinstance(raw, property):
                yield attr, raw, False
            elif isinstance(raw, staticmethod):
                yield attr, raw.__func__, False
            elif isinstance(raw, classmethod):
                yield attr, raw.__func__, True
            elif inspect.isfunction(raw):
                yield attr, raw, True


def problems_of(name: str) -> Iterator[str]:
    """One line per problem of the public name ``name`` (and its members)."""
    obj = getattr(aioflows, name)
    if inspect.isclass(obj):
        yield from _class_problems(name, obj)
    elif callable(obj):
        yield from _callable_problems(name, obj, _params(obj, bound=False), [obj.__doc__])
    else:
        yield f"{name}: neither a class nor a callable; teach tests/test_docstrings.py it"


def problems() -> Iterator[str]:
    """One line per public object whose docstring is missing or leaves a parameter out."""
    for name in PUBLIC:
        yield from problems_of(name)


def _class_problems(name: str, cls: type) -> Iterator[str]:
    params, docs = _constructor(cls)
    if not (cls.__doc__ or "").strip():
        yield f"{name}: no docstring"
    sections = _PARAM_SECTIONS | {"Attributes"}
    documented = {n for doc in docs for n in documented_names(doc, sections)}
    for param in params:
        if param not in documented:
            yield f"{name}: parameter {param!r} not in Args:"
    for attr, member, bound in _members(cls):
        qualname = f"{name}.{attr}"
        if isinstance(member, property):
            if not (inspect.getdoc(member) or "").strip():
                yield f"{qualname}: no docstring"
            continue
        doc = inspect.getdoc(getattr(cls, attr))  # an override inherits its base's docstring
        yield from _callable_problems(qualname, member, _params(member, bound=bound), [doc])


def _callable_problems(
    qualname: str, fn: Callable[..., Any], params: list[str], docs: list[str | None]
) -> Iterator[str]:
    if not any((doc or "").strip() for doc in docs):
        yield f"{qualname}: no docstring"
        return
    documented = [n for doc in docs for n in documented_names(doc or "", _PARAM_SECTIONS)]
    for param in params:
        if param not in documented:
            yield f"{qualname}: parameter {param!r} not in Args:"
    for stale in sorted(set(documented) - set(params)):
        yield f"{qualname}: Args: names {stale!r}, which is not a parameter"


def test_the_parser_reads_google_style_args() -> None:
    doc = """Summary.

    Args:
        fn: Async callable.
        items (Iterable): Many lines
            of text: with a colon.
        *args: Passed on.

    Returns:
        not_a_param: a return section is no Args.
    """
    assert documented_names(doc, _PARAM_SECTIONS) == ["fn", "items", "args"]


def test_an_undocumented_parameter_is_reported() -> None:
    def good(a: int, *, b: int) -> None:
        """Do it.

        Args:
            a: One.
            b: Two.
        """

    def bad(a: int, c: int) -> None:
        """Do it.

        Args:
            a: One.
            b: Gone.
        """

    assert list(_callable_problems("good", good, _params(good, bound=False), [good.__doc__])) == []
    assert list(_callable_problems("bad", bad, _params(bad, bound=False), [bad.__doc__])) == [
        "bad: parameter 'c' not in Args:",
        "bad: Args: names 'b', which is not a parameter",
    ]


def test_constructors_methods_and_properties_are_checked() -> None:
    params, _ = _constructor(aioflows.Launcher)
    assert {"fn", "keys", "rate_per_key", "progress"} <= set(params)
    params, _ = _constructor(aioflows.TaskInfo)  # a pydantic model: its fields
    assert {"task", "config_hash", "state", "error"} <= set(params)
    params, _ = _constructor(aioflows.Rate)  # a dataclass: its fields
    assert params == ["limit", "period"]
    flow = {attr for attr, _, _ in _members(aioflows.Flow)}
    assert {"add", "run", "graph", "specs"} <= flow
    memory = {attr for attr, _, _ in _members(aioflows.MemoryStore)}  # inherited from ResultStore
    assert {"save", "load", "open", "list_infos"} <= memory
    assert "acquire" in {attr for attr, _, _ in _members(aioflows.RateLimiter)}


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_documents_its_parameters(name: str) -> None:
    found = list(problems_of(name))
    assert found == [], "\n".join(found)


def test_the_package_docstring_names_only_what_exists() -> None:
    """``aioflows/__init__.py`` says what the package holds; every name it gives is public."""
    named = set(re.findall(r"``(\w+)``", aioflows.__doc__ or ""))
    assert named, "the package docstring names what it holds"
    assert named <= set(aioflows.__all__)


if __name__ == "__main__":
    for line in problems():
        print(line)
