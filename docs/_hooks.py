"""The docs build's own code: the API reference's entries, and docstrings made to render well.

Both parts follow the code as it stands, so that a public name or an example added later is on
the site at the next build, without editing a page:

- MkDocs hooks (``hooks:`` in mkdocs.yml): ``docs/reference.md`` gets one mkdocstrings
  ``::: aioflows.NAME`` entry per name of ``aioflows.__all__`` (read from
  ``aioflows/__init__.py`` without importing it), grouped by the module it comes from;
  ``docs/examples.md`` gets the source of every ``examples/*.py``; and a page's links to
  ``../examples/NAME.py`` (which work when reading the Markdown in the repository) point to
  that page's section on the site;
- a griffe extension (``extensions:`` of the python handler) that turns the Sphinx roles the
  code's docstrings use (``:class:`Retry```) into links to the reference where the target is
  public, and code otherwise; gives a method that overrides a documented one without a
  docstring of its own its base's, as ``help()`` does; and documents a public function that
  is made at import time (``launch = _run_once(Launcher)``, an attribute to static analysis)
  with the signature and docstring it has at run time.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import griffe

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- aioflows-reference"
EXAMPLES_MARKER = "<!-- aioflows-examples"
_EXAMPLE_LINK = re.compile(r"\]\(\.\./examples/([A-Za-z0-9_]+)\.py\)")

#: Reference sections, by the first part of the module a name is imported from; a module not
#: named here gets a section of its own, titled by its name.
SECTIONS: dict[str, str] = {
    "concurrency": "Concurrent calls: map and imap",
    "limits": "Rate limits",
    "retry": "Retries",
    "flow": "Flows",
    "stores": "Stores",
    "stream": "Streams",
    "launcher": "Launcher",
    "http": "HTTP client",
    "serving": "Serving",
    "errors": "Errors",
}


def public_names() -> list[tuple[str, str]]:
    """``(name, module)`` for each name of ``aioflows.__all__``, in the order it is imported."""
    tree = ast.parse((ROOT / "aioflows" / "__init__.py").read_text(encoding="utf-8"))
    exported: list[str] = []
    source: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            for alias in node.names:
                source[alias.asname or alias.name] = node.module
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            exported = list(ast.literal_eval(node.value))
    missing = [n for n in exported if n not in source and n != "__version__"]
    if missing:
        raise RuntimeError(f"aioflows.__all__ names {missing} that no `from .x import` brings in")
    order = {name: i for i, name in enumerate(source)}
    names = sorted((n for n in exported if n != "__version__"), key=order.__getitem__)
    return [(name, source[name]) for name in names]


def reference_markdown() -> str:
    """The reference's sections: one ``:::`` entry per public name."""
    groups: dict[str, list[str]] = {}
    for name, module in public_names():
        groups.setdefault(module.split(".")[0], []).append(name)
    ordered = [m for m in SECTIONS if m in groups] + [m for m in groups if m not in SECTIONS]
    parts: list[str] = []
    for module in ordered:
        title = SECTIONS.get(module, module.replace("_", " ").capitalize())
        parts.append(f"## {title}\n")
        parts.extend(f"::: aioflows.{name}\n" for name in groups[module])
    return "\n".join(parts)


def examples_markdown() -> str:
    """A section per example script: its summary line, then its whole source."""
    parts: list[str] = []
    for path in sorted((ROOT / "examples").glob("*.py")):
        if path.name.startswith("_"):
            continue
        source = path.read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(source)) or ""
        summary = doc.split("\n\n")[0].replace("\n", " ").strip()
        parts.append(f"## examples/{path.name} {{#{path.stem}}}\n\n{summary}\n")
        fence = "`" * max(3, *(len(run) + 1 for run in re.findall("`+", source)))
        parts.append(f'{fence}py title="examples/{path.name}"\n{source.rstrip()}\n{fence}\n')
    return "\n".join(parts)


def _fill(markdown: str, marker: str, content: str, page: str) -> str:
    if marker not in markdown:
        raise RuntimeError(f"docs/{page} lost its marker {marker!r}")
    head, _, tail = markdown.partition(marker)
    return head + content + "\n" + tail.partition("-->")[2]


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """MkDocs hook: fill in the generated pages; repository links to examples, to the site's."""
    uri = page.file.src_uri
    if uri == "reference.md":
        return _fill(markdown, MARKER, reference_markdown(), uri)
    if uri == "examples.md":
        return _fill(markdown, EXAMPLES_MARKER, examples_markdown(), uri)
    return _EXAMPLE_LINK.sub(r"](examples.md#\1)", markdown)


#: reStructuredText's "::" that ends the line before a literal block; Markdown needs no mark.
_LITERAL = re.compile(r"(?<=\w)::$", re.M)
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|exc|data|obj|mod):`(~?)([^`]+)`")


def _role_to_markdown(public: set[str], match: re.Match[str]) -> str:
    short, target = match[1] == "~", match[2].strip()
    parts = target.split(".")
    if parts[0] == "aioflows":
        parts = parts[1:]
    shown = parts[-1] if short or not parts else ".".join(parts)
    if parts and parts[-1] in public and (len(parts) == 1 or target.startswith("aioflows.")):
        return f"[`{shown}`][aioflows.{parts[-1]}]"
    if len(parts) == 2 and parts[0] in public:
        return f"[`{shown}`][aioflows.{parts[0]}.{parts[1]}]"
    return f"`{shown}`"


class DocstringsForTheSite(griffe.Extension):
    """Sphinx roles as Markdown links or code; overrides inherit their base's docstring."""

    def __init__(self) -> None:
        super().__init__()
        self._public = {name for name, _ in public_names()}

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name != "aioflows":
            return
        self._made_at_import(pkg)
        self._walk(pkg, set())

    def _made_at_import(self, pkg: griffe.Module) -> None:
        module = importlib.import_module("aioflows")
        for name in sorted(self._public):
            member = pkg.members.get(name)
            if member is None:
                continue
            try:
                found = member.final_target if isinstance(member, griffe.Alias) else member
            except griffe.AliasResolutionError:
                continue
            runtime = getattr(module, name, None)
            parent = found.parent
            if not isinstance(found, griffe.Attribute) or not inspect.isfunction(runtime):
                continue
            if not isinstance(parent, (griffe.Module, griffe.Class)):
                continue
            parent.set_member(found.name, _function(found, runtime))

    def _walk(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if isinstance(obj, griffe.Class):
            self._inherit(obj)
        if obj.docstring is not None:
            value = _ROLE.sub(lambda m: _role_to_markdown(self._public, m), obj.docstring.value)
            obj.docstring.value = _LITERAL.sub(":", value)  # "Usage::" -> "Usage:", then code
        for member in obj.members.values():
            if isinstance(member, griffe.Object):  # an Alias is documented where it points
                self._walk(member, seen)

    def _inherit(self, cls: griffe.Class) -> None:
        for name, member in cls.members.items():
            if isinstance(member, griffe.Alias) or member.docstring is not None:
                continue
            for base in cls.mro():
                inherited = base.members.get(name)
                if inherited is not None and inherited.docstring is not None:
                    member.docstring = griffe.Docstring(
                        inherited.docstring.value, parent=member, parser=inherited.docstring.parser
                    )
                    break


def _function(attribute: griffe.Attribute, runtime: Any) -> griffe.Function:
    """A griffe Function for ``runtime``, standing where ``attribute`` was found."""
    signature = inspect.signature(runtime)
    empty = inspect.Parameter.empty
    parameters = griffe.Parameters(
        *(
            griffe.Parameter(
                p.name,
                annotation=None if p.annotation is empty else str(p.annotation),
                kind=griffe.ParameterKind(p.kind.description),  # the same words
                default=None if p.default is empty else repr(p.default),
            )
            for p in signature.parameters.values()
        )
    )
    returns = signature.return_annotation
    function = griffe.Function(
        attribute.name,
        parameters=parameters,
        returns=None if returns is inspect.Signature.empty else str(returns),
        lineno=attribute.lineno,
        endlineno=attribute.endlineno,
        docstring=griffe.Docstring(inspect.getdoc(runtime) or "", parser="google"),
    )
    if inspect.iscoroutinefunction(runtime):
        function.labels.add("async")
    return function
