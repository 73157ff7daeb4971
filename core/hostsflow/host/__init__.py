"""The host: interface table, host and interface counters, identity, agent address.

Everything here reads /proc and /sys of the agent's own network namespace when called; nothing
is cached between calls except what the caller keeps (an :class:`InterfaceTable`).
"""

from .agent_address import AgentCidr, Candidate, candidates, elect_agent_address
from .counters import (
    CounterReadError,
    all_interface_records,
    host_records,
    interface_counters,
)
from .identity import host_uuid, hostname, machine_id
from .interfaces import Interface, InterfaceDiff, InterfaceTable, scan_interfaces
from .sampling import format_speed, sampling_rate_for

__all__ = [
    "AgentCidr",
    "Candidate",
    "CounterReadError",
    "Interface",
    "InterfaceDiff",
    "InterfaceTable",
    "all_interface_records",
    "candidates",
    "elect_agent_address",
    "format_speed",
    "host_records",
    "host_uuid",
    "hostname",
    "interface_counters",
    "machine_id",
    "sampling_rate_for",
    "scan_interfaces",
]
