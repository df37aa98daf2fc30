"""Which of a launcher's keys still work: a key the API keeps rejecting leaves the rotation.

A key that was revoked, mistyped or never paid for answers every call with 401 or 403. Left in
the rotation it fails a share of the pairs on every run (each retried on it, in the worst case,
until its attempts are spent). So after :data:`QUARANTINE_AFTER` rejections on one key with no
success in between, it is quarantined for the rest of the run: no call is sent with it again,
it is logged by its label (never the secret, never the error text, which may quote it) and the
summary counts it. If every key is quarantined, nothing can succeed any more and the run stops
(:class:`~aioflows.errors.AllKeysQuarantined`). A new run tries every key again.

A rejection is any exception of ``fn`` carrying an HTTP status 401 or 403: httpx's
``HTTPStatusError`` (``exc.response.status_code``) or an SDK's error with ``status_code`` (the
OpenAI and Anthropic clients'). The ``"default"`` key of a launcher without keys is never
quarantined: there is no key to blame.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

__all__ = ["QUARANTINE_AFTER", "REJECTED", "KeyHealth", "rejection_status"]

logger = logging.getLogger("aioflows.launcher")

#: Rejections in a row (no success between them) that quarantine a key.
QUARANTINE_AFTER = 3
#: The statuses that say "this key may not call": unauthenticated, forbidden.
REJECTED = frozenset({401, 403})


def rejection_status(exc: BaseException) -> int | None:
    """401 or 403 if ``exc`` is the API rejecting the key, else None."""
    try:
        status = getattr(exc, "status_code", None)
        if status is None:
            status = getattr(getattr(exc, "response", None), "status_code", None)
    except Exception:  # a property that raises (httpx's ``request`` when unset, say)
        return None
    if isinstance(status, int) and not isinstance(status, bool) and status in REJECTED:
        return status
    return None


class KeyHealth:
    """The rejections in a row of each key of one run, and the keys quarantined so far."""

    __slots__ = ("_streak", "quarantined")

    def __init__(self, labels: Sequence[str], *, blameless: bool) -> None:
        # A launcher without keys has one "default" key: never quarantined (nothing to blame).
        self._streak = {} if blameless else dict.fromkeys(labels, 0)
        self.quarantined: list[str] = []

    def alive(self, label: str) -> bool:
        return label not in self.quarantined

    @property
    def all_dead(self) -> bool:
        return bool(self._streak) and len(self.quarantined) == len(self._streak)

    def succeeded(self, label: str) -> None:
        if label in self._streak:
            self._streak[label] = 0

    def failed(self, label: str, exc: BaseException) -> bool:
        """Count a failure of a call made with ``label``; True if that quarantined it now."""
        status = rejection_status(exc)
        if status is None or label not in self._streak or not self.alive(label):
            return False
        self._streak[label] += 1
        if self._streak[label] < QUARANTINE_AFTER:
            return False
        self.quarantined.append(label)
        logger.warning(
            "%s quarantined after %d rejections in a row (HTTP %d): no more calls with it "
            "in this run, its pairs go to the other keys",
            label,
            self._streak[label],
            status,
        )
        return True
