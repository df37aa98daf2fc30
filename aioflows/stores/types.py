"""How objects become bytes on disk and back: the per-store registry of save types.

A type pairs a serialiser with a file extension. The extension is how a file store recognises
the type again when it reads a directory back, so extensions are kept unambiguous: no two types
share one, and none is a dotted suffix of another (``"json"`` and ``"gz.json"`` could not both be
told apart from ``a.gz.json``).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import CorruptObject, InvalidArgument, InvalidArgumentType
from . import jsontext

__all__ = ["StoreType", "TypeRegistry"]

# Reserved for files that are not saved objects: in-flight writes end in ".tmp".
_RESERVED_EXTENSIONS = frozenset({"tmp"})


@dataclass(frozen=True, slots=True)
class StoreType:
    """One registered type. ``save(obj)`` gives ``str`` or ``bytes``; ``load`` gets ``bytes``
    when ``binary`` else ``str``."""

    name: str
    save: Callable[[Any], str | bytes]
    load: Callable[[Any], Any]
    extension: str
    binary: bool

    def encode(self, obj: Any, name: str) -> bytes:
        """Serialise ``obj`` to the bytes written to disk (text is UTF-8)."""
        try:
            data = self.save(obj)
        except Exception as exc:
            raise InvalidArgumentType(
                f"cannot save {name!r} as {self.name!r}: {type(exc).__name__}: {exc}"
            ) from exc
        if isinstance(data, str):
            try:
                return data.encode()
            except UnicodeEncodeError as exc:  # a lone surrogate has no UTF-8 form
                raise InvalidArgumentType(
                    f"cannot save {name!r} as {self.name!r}: its text is not valid UTF-8 ({exc})"
                ) from exc
        if isinstance(data, (bytes, bytearray, memoryview)):
            return bytes(data)
        raise InvalidArgumentType(
            f"the save function of type {self.name!r} must return str or bytes, "
            f"got {type(data).__name__}"
        )

    def decode(self, data: bytes, where: str) -> Any:
        """Deserialise what :meth:`encode` wrote; anything undecodable is a CorruptObject."""
        try:
            return self.load(data if self.binary else data.decode())
        except Exception as exc:
            raise CorruptObject(
                where, f"not a valid {self.name!r} object ({type(exc).__name__}: {exc})"
            ) from exc


def _save_json(obj: Any) -> str:
    # Lone surrogates escaped, ints past Python's str-conversion limit kept: see jsontext.
    return jsontext.dumps(obj)


def _save_text(obj: Any) -> str:
    if not isinstance(obj, str):
        raise TypeError(f"expected str, got {type(obj).__name__}")
    return obj


def _save_bytes(obj: Any) -> bytes:
    if not isinstance(obj, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(obj).__name__}")
    return bytes(obj)


def _save_pickle(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _identity(data: Any) -> Any:
    return data


_BUILTIN = (
    StoreType("json", _save_json, jsontext.loads, "json", binary=False),
    StoreType("text", _save_text, _identity, "txt", binary=False),
    StoreType("bytes", _save_bytes, _identity, "bin", binary=True),
    # Unpickling runs arbitrary code: only for files this application wrote itself.
    StoreType("pickle", _save_pickle, pickle.loads, "pkl", binary=True),
)


class TypeRegistry:
    """The types one store knows, by name and by extension."""

    __slots__ = ("_by_name",)

    def __init__(self, types: Iterable[StoreType] = _BUILTIN) -> None:
        self._by_name = {t.name: t for t in types}

    def __getitem__(self, name: str) -> StoreType:
        try:
            return self._by_name[name]
        except (KeyError, TypeError):
            raise InvalidArgument(
                f"unknown type_ {name!r}; registered types: {', '.join(sorted(self._by_name))}"
            ) from None

    def __iter__(self) -> Any:
        return iter(self._by_name.values())

    @property
    def extensions(self) -> tuple[str, ...]:
        return tuple(t.extension for t in self._by_name.values())

    def register(
        self,
        name: str,
        *,
        save: Callable[[Any], str | bytes],
        load: Callable[[Any], Any],
        extension: str | None,
        binary: bool,
    ) -> StoreType:
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"a type name must be a non-empty str, got {name!r}")
        if not callable(save) or not callable(load):
            raise InvalidArgumentType(f"save and load of type {name!r} must be callable")
        ext = (name if extension is None else extension).lstrip(".")
        if not ext or any(c in ext for c in "/\\\0") or ext.endswith("."):
            raise InvalidArgument(f"extension {extension!r} of type {name!r} is not usable")
        if ext.lower() in _RESERVED_EXTENSIONS:
            raise InvalidArgument(f"extension {ext!r} is reserved for in-flight writes")
        for other in self._by_name.values():
            if other.name == name:
                continue  # re-registering a name replaces that type
            # Compared case-insensitively: macOS and Windows file names are.
            a, b = sorted((ext.lower(), other.extension.lower()), key=len)
            if a == b or b.endswith("." + a):
                raise InvalidArgument(
                    f"extension {ext!r} of type {name!r} cannot be told apart from "
                    f"{other.extension!r} of type {other.name!r}"
                )
        stype = StoreType(name, save, load, ext, binary=bool(binary))
        self._by_name[name] = stype
        return stype

    def split(self, filename: str) -> tuple[str, StoreType] | None:
        """``"model.json"`` → ``("model", <json>)``; None when no extension matches."""
        for stype in self._by_name.values():
            suffix = "." + stype.extension
            if filename.endswith(suffix) and len(filename) > len(suffix):
                return filename[: -len(suffix)], stype
        return None
