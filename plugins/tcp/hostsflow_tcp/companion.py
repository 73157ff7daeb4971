"""Another module's lookups, sent with the tcp module's own.

When both ends of a sampled connection are on this host (loopback traffic, two services
talking), the tcp module looks up one end and the systemd module's marking needs the other.
Rather than a second netlink round trip in phase 2, the marking registers a :class:`Companion`
for the agent (:func:`register`, from ``sflow_configure``); the tcp module then asks it, for each
lookup it is about to make, which other socket it wants (:meth:`Companion.also_wanted`), writes
both requests in ONE ``send()`` (:meth:`~.lookup.DiagChannel.request_many`) and hands the other
reply back (:meth:`Companion.answered`) before the sample reaches phase 2.

Only the agent's own namespace takes part; a module that gets no answer this way (the tcp
module is not enabled, or the reply was late) looks the socket up itself.
"""

from __future__ import annotations

import weakref
from typing import Any, Protocol

from hostsflow.samples import FlowSample

from .diag import Reply
from .lookup import FlowKey


class Companion(Protocol):
    """What the tcp module calls, per lookup it makes in the agent's namespace."""

    def also_wanted(self, sample: FlowSample, key: FlowKey) -> FlowKey | None:
        """The other socket to look up (without tcp_info) with ``key``, or None."""

    def answered(self, key: FlowKey, reply: Reply | None) -> None:
        """The reply for a key :meth:`also_wanted` returned (None: not there at once)."""


_COMPANIONS: "weakref.WeakKeyDictionary[Any, Companion]" = weakref.WeakKeyDictionary()


def register(agent: Any, companion: Companion | None) -> None:
    """Register (None: remove) the companion of ``agent``'s tcp module; one per agent."""
    if companion is None:
        _COMPANIONS.pop(agent, None)
    else:
        _COMPANIONS[agent] = companion


def companion_for(agent: Any) -> Companion | None:
    """The companion registered for ``agent``, if any (the tcp module asks at ``sflow_start``)."""
    return _COMPANIONS.get(agent)
