"""Agent address election, as hsflowd's ``selectAgentAddress`` and ``agentAddressPriority``.

Order of precedence: an explicit ``agentIP`` wins outright; otherwise every address of every
admin-up interface is a :class:`Candidate` with hsflowd's base priority (below), plus an
``agent.cidr`` boost or veto, plus 13 if it sits on the ``agent=`` device (matched by name, else
by ifalias); the best candidate wins.  Ties go to a configured (permanent) address over a
dynamic IPv6 one, then the lowest ifIndex, then the address discovered first.

Base priorities (higher wins)::

    0 none / multicast   1 IPv4 class E     3 IPv6 loopback   4 IPv4 loopback
    5 IPv4 169.254/16    6 IPv6 fe80::/10   7 IPv6 on a VLAN  8 IPv4 on a VLAN
    9 IPv6 ULA fc00::/7  10 IPv6 global     11 IPv4 RFC 1918  12 IPv4 global

``agent.cidr`` entries are kept in reverse file order; the first one from that head that
contains the address adds ``index x 13`` (index from 1), so entries earlier in the file boost
more; a ``!CIDR`` match sets the priority to 0.

Differences from hsflowd, on purpose:

* the "SLAAC" tie-breaker: hsflowd reads bit 0x80 of /proc/net/if_inet6 as "autoconf", but that
  bit is ``IFA_F_PERMANENT`` (a configured address), which inverts the rule; here an IPv6
  address is *dynamic* when it lacks ``IFA_F_PERMANENT`` and configured addresses win;
* a candidate whose priority is 0 (vetoed by ``!CIDR``, or multicast) is never elected; hsflowd
  would still pick it when nothing else exists.  :func:`elect_agent_address` then returns None.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from .interfaces import Interface, InterfaceTable

IPSP_NONE = 0
IPSP_CLASS_E = 1
IPSP_MULTICAST = 2
IPSP_LOOPBACK6 = 3
IPSP_LOOPBACK4 = 4
IPSP_SELFASSIGNED4 = 5
IPSP_IP6_SCOPE_LINK = 6
IPSP_VLAN6 = 7
IPSP_VLAN4 = 8
IPSP_IP6_SCOPE_UNIQUE = 9
IPSP_IP6_SCOPE_GLOBAL = 10
IPSP_IP4_RFC1918 = 11
IPSP_IP4 = 12
IPSP_NUM_PRIORITIES = 13

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_SELF4 = ipaddress.ip_network("169.254.0.0/16")
_CLASS_E = ipaddress.ip_network("240.0.0.0/4")
_MCAST4 = ipaddress.ip_network("224.0.0.0/4")
_LINK6 = ipaddress.ip_network("fe80::/10")
_ULA6 = ipaddress.ip_network("fc00::/7")
_MCAST6 = ipaddress.ip_network("ff00::/8")


@attrs.frozen(slots=True)
class AgentCidr:
    """One ``agent.cidr`` entry: a network, and whether it is a ``!`` veto."""

    network: IpNetwork
    veto: bool = False

    @classmethod
    def parse(cls, text: str) -> AgentCidr:
        """``"10.0.0.0/8"`` or ``"!192.168.0.0/16"`` (host bits are ignored)."""
        t = text.strip()
        veto = t.startswith("!")
        return cls(ipaddress.ip_network(t.lstrip("!").strip(), strict=False), veto)

    def __str__(self) -> str:
        return ("!" if self.veto else "") + str(self.network)


def _as_cidr(c: object) -> AgentCidr:
    if isinstance(c, AgentCidr):
        return c
    if isinstance(c, str):
        return AgentCidr.parse(c)
    network = getattr(c, "network", None)  # the config's AgentCIDR (network, negate)
    if network is not None:
        return AgentCidr(ipaddress.ip_network(network), bool(getattr(c, "negate", False)))
    raise TypeError(f"not an agent.cidr entry: {c!r}")


def _as_cidrs(cidrs: Iterable[object] | None) -> list[AgentCidr]:
    return [_as_cidr(c) for c in (cidrs or ())]


def base_priority(addr: IpAddress, vlan: bool = False, loopback: bool = False) -> int:
    """hsflowd's ``agentAddressPriority`` without the CIDR adjustment.

    ``vlan`` is true for an address on a VLAN sub-interface, ``loopback`` for one on a
    loopback interface (IPv4 loopback is recognised by the interface, not the address)."""
    if addr.version == 4:
        if loopback:
            p = IPSP_LOOPBACK4
        elif addr in _SELF4:
            p = IPSP_SELFASSIGNED4
        elif vlan:
            p = IPSP_VLAN4
        elif any(addr in n for n in _RFC1918):
            p = IPSP_IP4_RFC1918
        elif addr in _CLASS_E:
            p = IPSP_CLASS_E
        elif addr in _MCAST4:
            p = IPSP_MULTICAST
        else:
            p = IPSP_IP4
        mcast = addr in _MCAST4
    else:
        if loopback or addr == ipaddress.IPv6Address("::1"):
            p = IPSP_LOOPBACK6
        elif addr in _LINK6:
            p = IPSP_IP6_SCOPE_LINK
        elif addr in _ULA6:
            p = IPSP_IP6_SCOPE_UNIQUE
        elif vlan:
            p = IPSP_VLAN6
        elif addr in _MCAST6:
            p = IPSP_MULTICAST
        else:
            p = IPSP_IP6_SCOPE_GLOBAL
        mcast = addr in _MCAST6
    return IPSP_NONE if mcast else p


def cidr_adjust(priority: int, addr: IpAddress, cidrs: list[AgentCidr]) -> int:
    """Apply ``agent.cidr`` (``cidrs`` in file order): the last matching entry in the file
    decides; a veto gives 0, otherwise ``+ 13 x k`` where k is its position counted from the
    end of the file (1 = last line)."""
    for index, cidr in enumerate(reversed(cidrs), start=1):
        if cidr.network.version == addr.version and addr in cidr.network:
            return IPSP_NONE if cidr.veto else priority + index * IPSP_NUM_PRIORITIES
    return priority


@attrs.frozen(slots=True)
class Candidate:
    """A local address competing to be the agent address.

    ``priority`` includes the CIDR adjustment and the ``agent=`` device boost; ``devices`` are
    the interfaces it was found on (discovery order); ``dynamic`` is true for an IPv6 address
    without ``IFA_F_PERMANENT`` (SLAAC/DHCPv6); ``min_ifindex`` and ``discovery`` are the
    tie-breakers."""

    address: str
    priority: int
    base_priority: int
    devices: tuple[str, ...]
    dynamic: bool = False
    min_ifindex: int = 0
    discovery: int = 0
    pegged: bool = False

    def sort_key(self) -> tuple[int, bool, int, int]:
        """Ascending sort key for best-first order."""
        return (-self.priority, self.dynamic, self.min_ifindex, self.discovery)


def resolve_agent_device(interfaces: InterfaceTable, agent_dev: str | None) -> Interface | None:
    """The interface named by ``agent=``: by name, else by ifalias (None if neither)."""
    if not agent_dev:
        return None
    return interfaces.by_name(agent_dev) or interfaces.by_alias(agent_dev)


def candidates(
    interfaces: InterfaceTable | Iterable[Interface],
    agent_dev: str | None = None,
    cidrs: Iterable[object] | None = None,
) -> list[Candidate]:
    """Every address of every admin-up interface as a :class:`Candidate`, best first."""
    table = (
        interfaces if isinstance(interfaces, InterfaceTable) else InterfaceTable(list(interfaces))
    )
    cidr_list = _as_cidrs(cidrs)
    pegged_iface = resolve_agent_device(table, agent_dev)
    pegged = pegged_iface.name if pegged_iface is not None else None

    found: dict[IpAddress, dict] = {}
    for iface in table:
        if not iface.up:
            continue
        for text in iface.addresses:
            try:
                addr = ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError:
                continue
            prio = cidr_adjust(
                base_priority(addr, vlan=iface.kind == "vlan", loopback=iface.loopback),
                addr,
                cidr_list,
            )
            entry = found.get(addr)
            if entry is None:
                found[addr] = entry = {
                    "devices": [],
                    "priority": prio,
                    "base": base_priority(addr, iface.kind == "vlan", iface.loopback),
                    "dynamic": text in iface.dynamic_addresses,
                    "min_ifindex": iface.ifindex,
                    "discovery": len(found),
                }
            elif prio > entry["priority"]:
                entry["priority"] = prio
                entry["base"] = base_priority(addr, iface.kind == "vlan", iface.loopback)
            entry["devices"].append(iface.name)
            entry["min_ifindex"] = min(entry["min_ifindex"], iface.ifindex)

    out = []
    for addr, e in found.items():
        on_pegged = pegged is not None and pegged in e["devices"]
        out.append(
            Candidate(
                address=str(addr),
                priority=e["priority"] + (IPSP_NUM_PRIORITIES if on_pegged else 0),
                base_priority=e["base"],
                devices=tuple(e["devices"]),
                dynamic=e["dynamic"],
                min_ifindex=e["min_ifindex"],
                discovery=e["discovery"],
                pegged=on_pegged,
            )
        )
    out.sort(key=Candidate.sort_key)
    return out


def elect_agent_address(
    interfaces: InterfaceTable | Iterable[Interface],
    agent_ip: str | None = None,
    agent_dev: str | None = None,
    cidrs: Iterable[object] | None = None,
) -> str | None:
    """The agent address: ``agent_ip`` if given (used as is, even if not local, as hsflowd),
    else the best :func:`candidates` entry with a priority above 0, else None (the agent then
    suppresses sending until an election succeeds)."""
    if agent_ip:
        try:
            return str(ipaddress.ip_address(agent_ip))
        except ValueError:
            return agent_ip  # a name the config layer did not resolve: pass it on
    for cand in candidates(interfaces, agent_dev, cidrs):
        if cand.priority > IPSP_NONE:
            return cand.address
    return None


def is_candidate(interfaces: InterfaceTable, config: Any, address: str) -> bool:
    """True while ``address`` is still one an election could choose: on an admin-up
    interface (or ``agentIP`` itself)."""
    if address == config.agent_ip:
        return True
    cidrs = [str(c) for c in config.agent_cidr]
    return any(c.address == address for c in candidates(interfaces, config.agent, cidrs))


def choose_agent_address(
    interfaces: InterfaceTable, config: Any, ask: Callable[[list[str]], str | None] | None,
) -> str | None:
    """The agent address for ``config`` (``agentIP``, ``agent``, ``agent.cidr``): ``ask``'s
    answer when given and not None (the modules' ``sflow_agent_address``, shown the
    candidates best first), else :func:`elect_agent_address`'s; None when neither has one."""
    cidrs = [str(c) for c in config.agent_cidr]
    chosen = elect_agent_address(
        interfaces, agent_ip=config.agent_ip, agent_dev=config.agent, cidrs=cidrs
    )
    if ask is None:
        return chosen
    ranked = [c.address for c in candidates(interfaces, config.agent, cidrs)]
    if chosen and chosen not in ranked:
        ranked.insert(0, chosen)  # agentIP: used as given
    return ask(ranked) or chosen
