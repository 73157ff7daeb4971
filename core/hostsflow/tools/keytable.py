"""A table of at most ``capacity`` keys, each forgotten ``ttl`` seconds after it was last seen.

The collector tools keep one per table that senders can grow (service names, agents): a key
that arrives while the table is full of live keys is refused and counted, never added, so a
flood of made-up keys costs a fixed amount of memory and every pass over the table stays
O(capacity).  Keys are kept in the order they were last seen (a Python dict keeps insertion
order; seeing a key again moves it to the end), so expiring is a walk from the front that
stops at the first live key.  Seeing a key again within :data:`SEEN_RESOLUTION` of the last
time leaves it where it is (the collectors see their keys thousands of times a second), so a
key may expire up to that much late.

A table may also cap the keys of each group (``group(key)``, e.g. the agent a service belongs
to at ``per_group``), so that one sender flooding it leaves room for the others."""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

#: seconds within which seeing a key again does not move it
SEEN_RESOLUTION = 1.0

K = TypeVar("K")
V = TypeVar("V")


class KeyTable(Generic[K, V]):
    """``{key: value}`` bounded by ``capacity`` and expiring by ``ttl`` (seconds).

    ``refused`` counts the keys turned away because the table (or their group) was full.
    With ``group`` and ``per_group``, at most ``per_group`` keys share one ``group(key)``."""

    def __init__(self, capacity: int, ttl: float, per_group: int | None = None,
                 group: Callable[[K], Hashable] | None = None) -> None:
        if capacity < 1 or (per_group is not None and per_group < 1):
            raise ValueError("capacity and per_group must be at least 1")
        if (per_group is None) != (group is None):
            raise ValueError("per_group and group go together")
        self.capacity = capacity
        self.ttl = float(ttl)
        self.per_group = per_group
        self.group = group
        self.values: dict[K, V] = {}
        self._seen: dict[K, float] = {}
        self._in_group: collections.Counter[Hashable] = collections.Counter()
        self.refused = 0

    def __len__(self) -> int:
        return len(self.values)

    def __contains__(self, key: object) -> bool:
        return key in self.values

    def __iter__(self) -> Iterator[K]:
        return iter(self.values)

    def get(self, key: K, default: V | None = None) -> V | None:
        return self.values.get(key, default)

    def items(self) -> Iterator[tuple[K, V]]:
        return iter(self.values.items())

    def put(self, key: K, value: V, now: float) -> bool:
        """Set ``key`` (seen now).  False, and counted in ``refused``, if the key is new and
        the table is full of keys seen within ``ttl``."""
        if key in self.values:
            del self._seen[key]
        else:
            if not self._room(key, now):
                self.refused += 1
                return False
            if self.group is not None:
                self._in_group[self.group(key)] += 1
        self.values[key] = value
        self._seen[key] = now
        return True

    def _full(self, key: K) -> bool:
        if len(self.values) >= self.capacity:
            return True
        return (self.group is not None and self.per_group is not None
                and self._in_group[self.group(key)] >= self.per_group)

    def _room(self, key: K, now: float) -> bool:
        """Whether a new ``key`` fits (after expiring, if it did not at first)."""
        if not self._full(key):
            return True
        self.expire(now)
        return not self._full(key)

    def touch(self, key: K, default: V, now: float) -> bool:
        """Mark ``key`` seen now, adding it with ``default`` if it is new (refused and counted
        when full, as :meth:`put`).  True if the key is (now) in the table."""
        seen = self._seen
        last = seen.get(key)
        if last is not None:
            if now - last >= SEEN_RESOLUTION or now < last:
                del seen[key]
                seen[key] = now
            return True
        return self.put(key, default, now)

    def expire(self, now: float) -> int:
        """Forget the keys last seen more than ``ttl`` ago; returns how many."""
        limit = now - self.ttl
        gone = 0
        seen = self._seen
        while seen:
            key = next(iter(seen))
            if seen[key] >= limit:
                break
            del seen[key]
            del self.values[key]
            if self.group is not None:
                g = self.group(key)
                self._in_group[g] -= 1
                if not self._in_group[g]:
                    del self._in_group[g]
            gone += 1
        return gone
