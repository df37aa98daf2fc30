"""JSON text for what the ``json`` module accepts, written as valid UTF-8 and read back as is.

Two kinds of value that ``json.dumps`` accepts do not survive the plain route into a file:

- A ``str`` holding a lone surrogate (an API reply cut in the middle of an emoji) has no UTF-8
  form. JSON itself can hold it, as a ``\\udXXX`` escape, and ``json.loads`` reads that escape
  back as the same lone surrogate; so every surrogate is written escaped. Two *adjacent*
  surrogates (a high one followed by a low one, both as separate characters) are the one
  string JSON cannot hold: any reader joins their escapes into a single character. Those are
  refused (``ValueError``), never written as something else.
- An ``int`` longer than Python's integer-to-string limit (``sys.get_int_max_str_digits()``,
  4300 digits by default, e.g. ``10**5000``) makes ``json.dumps`` and ``json.loads`` raise.
  JSON has no such limit, and the limit is a process-wide setting no library may change for a
  moment (another thread converting an untrusted string then would lose its protection). Such
  ints are converted here, digits in chunks under the limit (divide and conquer, so the cost
  grows as ``str(int)``'s own would), without touching the setting.

The common case takes the plain ``json`` route and pays nothing for this: the slow paths run only
after it raised.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from typing import Any

__all__ = ["dumps", "holds_text", "loads"]

_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
# Chunks stay under 640 digits, the smallest limit Python lets a program set.
_CHUNK_DIGITS = 600
_CHUNK_BITS = 1993  # 2**1993 < 10**600: an int of at most this many bits has <= 600 digits


def dumps(
    obj: Any,
    *,
    indent: int | None = None,
    join_pairs: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> str:
    """``json.dumps(obj, ensure_ascii=False)``, with surrogates escaped and long ints written.

    Raises what ``json.dumps`` raises for values it refuses (``TypeError``, a circular
    ``ValueError``), and ``ValueError`` for a string JSON cannot hold (see the module) unless
    ``join_pairs``: then its two surrogates are written as escapes anyway, to be read back as
    the one character they stand for (for text that describes, like a record's config, where a
    file that exists beats one refused). ``default`` is ``json.dumps``'s.
    """
    try:
        text = json.dumps(obj, ensure_ascii=False, indent=indent, default=default)
    except ValueError:
        text = _dumps_long_ints(obj, indent, default)
    if not text.isascii() and _SURROGATE.search(text):
        # Raw surrogates in the output are characters of strings (JSON's own syntax is ASCII).
        if not join_pairs and _SURROGATE_PAIR.search(text):
            raise ValueError(
                "a string holds a surrogate pair as two characters, which JSON cannot "
                "represent (it would read back as one character)"
            )
        text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text


def holds_text(text: str) -> bool:
    """Whether :func:`dumps` writes ``text`` so that it reads back unchanged (no surrogate pair
    kept as two characters): for a caller choosing JSON only when it is faithful."""
    return text.isascii() or _SURROGATE_PAIR.search(text) is None


def loads(text: str | bytes) -> Any:
    """``json.loads``, also for ints past Python's integer-to-string limit."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except ValueError:  # an int over the limit (the parser raises the conversion's error)
        return json.loads(text, parse_int=_parse_int)


def _dumps_long_ints(obj: Any, indent: int | None, default: Callable[[Any], Any] | None) -> str:
    """Dump ``obj`` whose ints over the limit stand in as unique tokens, then put digits in."""
    nonce = secrets.token_hex(16)
    digits: list[str] = []
    replaced = _replace_long_ints(obj, nonce, digits, set())
    if not digits:  # the ValueError was something else (a circular reference): raise it
        return json.dumps(obj, ensure_ascii=False, indent=indent, default=default)
    text = json.dumps(replaced, ensure_ascii=False, indent=indent, default=default)
    return re.sub(f'"{nonce}-([0-9]+)"', lambda m: digits[int(m.group(1))], text)


def _replace_long_ints(value: Any, nonce: str, digits: list[str], path: set[int]) -> Any:
    """A copy of ``value`` with each long int a token string; containers as json sees them."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            int.__repr__(value)
        except ValueError:
            digits.append(_int_to_str(int(value)))
            return f"{nonce}-{len(digits) - 1}"
        return value
    if not isinstance(value, (dict, list, tuple)):
        return value
    if id(value) in path:
        raise ValueError("Circular reference detected")
    path.add(id(value))
    try:
        if isinstance(value, dict):
            return {_key(k): _replace_long_ints(v, nonce, digits, path) for k, v in value.items()}
        return [_replace_long_ints(v, nonce, digits, path) for v in value]
    finally:
        path.discard(id(value))


def _key(key: Any) -> Any:
    # json writes an int key as its digits; a long one gets them here (same text).
    if isinstance(key, int) and not isinstance(key, bool):
        try:
            int.__repr__(key)
        except ValueError:
            return _int_to_str(int(key))
    return key


def _int_to_str(n: int) -> str:
    """Decimal digits of any int, converting no more than one chunk's digits at a time."""
    if n < 0:
        return "-" + _int_to_str(-n)
    if n.bit_length() <= _CHUNK_BITS:
        return int.__repr__(n)
    half = int(n.bit_length() * 0.30103) // 2  # about half its digits
    scale: int = 10**half
    high, low = divmod(n, scale)
    return _int_to_str(high) + _int_to_str(low).zfill(half)


def _parse_int(text: str) -> int:
    """``int(text)`` for a JSON integer (``-?[0-9]+``) of any length."""
    if len(text) <= _CHUNK_DIGITS:
        return int(text)
    if text[0] == "-":
        return -_parse_int(text[1:])
    half = len(text) // 2
    scale: int = 10**half
    return _parse_int(text[:-half]) * scale + _parse_int(text[-half:])
