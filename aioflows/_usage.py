"""The launcher's usage accounting: tokens that calls reported, per key and overall, and cost.

A call reports what it used with ``key.report_usage(tokens)`` (the same report that reconciles a
token budget); the launcher adds each attempt's last report to its key's total and to the pair's
own, so a pair that took two attempts is charged for both. With ``price_per_1k_tokens`` each
report also has a cost, ``tokens / 1000 * price`` of the key the attempt ran on. Prices are given
per run (one number, every key) or by key *label* (``{"key-0": 0.5}``): a label is what every
record and log shows, while a key string is a secret, so a mapping keyed by one is refused
without echoing it. A key without a price has tokens but no cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from . import _validate
from .apikeys import KeyState
from .errors import InvalidArgument, InvalidArgumentType

__all__ = ["Usage", "check_prices", "tokens_value"]


class _Charged(Protocol):
    """What a pair carries of its usage (the launcher's ``_Pair``)."""

    tokens: float | None
    spent: float | None


def check_prices(
    prices: float | Mapping[str, float] | None, keys: Sequence[KeyState]
) -> dict[str, float]:
    """Each key label's price per 1,000 tokens (labels without one left out)."""
    if prices is None:
        return {}
    labels = [key.label for key in keys]
    if isinstance(prices, Mapping):
        secrets = {key.secret for key in keys if key.secret}
        named = list(prices)
        if any(name in secrets for name in named):
            raise InvalidArgument(
                "price_per_1k_tokens is keyed by a key string: key it by the key's label "
                f"({', '.join(labels)}), which is safe to show"
            )
        unknown = [name for name in named if name not in labels]
        if unknown:
            # Not echoed: a name that is no label may still be somebody's key string.
            raise InvalidArgument(
                f"price_per_1k_tokens names {len(unknown)} key(s) that are not labels of this "
                f"launcher's keys ({', '.join(labels)})"
            )
        return {
            label: _validate.number(f"price_per_1k_tokens[{label!r}]", price)
            for label, price in prices.items()
        }
    if isinstance(prices, bool) or not isinstance(prices, (int, float)):
        raise InvalidArgumentType(
            "price_per_1k_tokens must be a number or a mapping of key label to number, "
            f"got {type(prices).__name__}"
        )
    price = _validate.number("price_per_1k_tokens", prices)
    return dict.fromkeys(labels, price)


def tokens_value(tokens: float) -> float | int:
    """Tokens as a record shows them: an int when whole (reports are counts, mostly)."""
    return int(tokens) if tokens.is_integer() else tokens


class Usage:
    """A run's usage: tokens and cost per key label, as the calls report them."""

    __slots__ = ("cost_per_key", "prices", "tokens_per_key")

    def __init__(self, prices: Mapping[str, float]) -> None:
        self.prices = prices
        self.tokens_per_key: dict[str, float] = {}
        self.cost_per_key: dict[str, float] = {}

    def charge(self, pair: _Charged, label: str, tokens: float) -> None:
        """One attempt's report, on ``label``: added to the key's totals and the pair's."""
        self.tokens_per_key[label] = self.tokens_per_key.get(label, 0.0) + tokens
        pair.tokens = (pair.tokens or 0.0) + tokens
        price = self.prices.get(label)
        if price is not None:
            cost = tokens / 1000 * price
            self.cost_per_key[label] = self.cost_per_key.get(label, 0.0) + cost
            pair.spent = (pair.spent or 0.0) + cost

    @property
    def tokens(self) -> float:
        return sum(self.tokens_per_key.values())

    @property
    def cost(self) -> float | None:
        """The run's cost so far; None when no key has a price."""
        if not self.prices:
            return None
        return sum(self.cost_per_key.values())

    @staticmethod
    def of(pair: _Charged) -> dict[str, Any]:
        """A record's ``usage``: ``{"tokens": n, "cost": x}`` (cost None without a price)."""
        tokens = pair.tokens or 0.0
        return {"tokens": tokens_value(tokens), "cost": pair.spent}
