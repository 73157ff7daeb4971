"""``sflow_agent_address``: asked once the modules are configured, and again after a reload,
so a module can answer from its own config; its answer is the address in every datagram."""

from __future__ import annotations

from typing import Any

import attrs

import hostsflow
from hostsflow.config import host, option
from hostsflow.config.schema import parse_config_text
from hostsflow.samples import HOST_SOURCE
from hostsflow.sflow.records import HostDescr
from hostsflow.testing import AgentHarness

CONF = "sflow { collector { ip = 127.0.0.1 } polling = 0 pinned { address = %s } }"


@attrs.frozen
class PinnedConfig:
    address: str = option(help="the agent address to use", converter=host, example="192.0.2.9")


class Pinned:
    """Answers the agent address from its config block; records the order of its hooks."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.address: str | None = None

    @hostsflow.hookimpl
    def sflow_declare_config(self, registry: Any) -> None:
        registry.block("pinned", PinnedConfig)

    @hostsflow.hookimpl
    def sflow_configure(self, agent: Any) -> None:
        self.calls.append("configure")
        self.address = agent.module_config("pinned").address

    @hostsflow.hookimpl
    def sflow_config_changed(self, agent: Any) -> None:
        self.calls.append("config_changed")
        self.address = agent.module_config("pinned").address

    @hostsflow.hookimpl
    def sflow_agent_address(self, candidates: list[str]) -> str | None:
        self.calls.append("agent_address")
        return self.address

    @hostsflow.hookimpl
    def sflow_poll_counters(self, source: Any) -> list[Any] | None:
        return [HostDescr(hostname="h")] if source == HOST_SOURCE else None

    @hostsflow.hookimpl
    def sflow_data_sources(self) -> list[Any]:
        return [HOST_SOURCE]


def test_the_address_is_elected_after_configure_and_the_module_answer_is_used() -> None:
    pinned = Pinned()
    with AgentHarness(CONF % "192.0.2.9", modules={"pinned": pinned}) as h:
        assert pinned.calls[:2] == ["configure", "agent_address"]
        assert h.agent.address == "192.0.2.9"
        h.poll_now()
        assert [d.agent_address for d in h.datagrams] == ["192.0.2.9"]


def test_a_reload_elects_again_after_the_modules_saw_the_new_config() -> None:
    pinned = Pinned()
    with AgentHarness(CONF % "192.0.2.9", modules={"pinned": pinned}) as h:
        h.poll_now()
        pinned.calls.clear()
        h.agent.reload(parse_config_text(CONF % "198.51.100.7", "<t>", h.registry))
        assert pinned.calls == ["config_changed", "agent_address"]
        h.poll_now()
        assert [d.agent_address for d in h.datagrams] == ["192.0.2.9", "198.51.100.7"]
        assert h.datagrams[1].sequence == 1  # a new address starts a new stream
