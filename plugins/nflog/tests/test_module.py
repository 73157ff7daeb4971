"""The nflog module inside an in-process agent (testing kit): config, bind conflicts, retry.

The socket is made in a test namespace through the ``netns`` key; traffic runs on that
namespace's loopback, logged by an nft output-hook rule.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import structlog
from hostsflow.config import ConfigError
from hostsflow.sflow.records import INTERNAL_IFINDEX
from hostsflow.testing import AgentHarness
from hostsflow_nflog import NflogModule
from hostsflow_nflog.nlsocket import NflogSocket

GROUP = 23


def conf(extra: str = "", nflog: str = f"group = {GROUP} probability = 0.1") -> str:
    return (f"sflow {{ collector {{ ip = 127.0.0.1 }} sampling = 10 polling = 0 {extra}\n"
            f"  nflog {{ {nflog} }} }}")


@pytest.mark.parametrize("body,message", [
    ("probability = 0.1", "group"),
    ("group = 0", "group"),
    ("group = 5 probability = 1.5", "probability"),
    ("group = 5 snaplen = 4", "snaplen"),
    ("group = 5 probability = 0", "probability"),
    ("group = 5 colour = red", "colour"),
])
def test_config_errors(body: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        AgentHarness(conf(nflog=body), modules={"nflog": NflogModule()})
    assert message in str(exc.value)
    assert "<test>:" in str(exc.value)  # FILE:LINE


def test_config_defaults() -> None:
    h = AgentHarness(conf(nflog="group = 5"), modules={"nflog": NflogModule()})
    cfg = h.agent.module_config("nflog")
    assert (cfg.group, cfg.probability, cfg.snaplen, cfg.qthreshold, cfg.timeout, cfg.netns) \
        == (5, 1.0, None, 100, 1.0, None)
    h.stop()


def nft_output_rule(ns: str) -> None:
    rules = (f"table inet hsfp {{\n chain out {{\n  type filter hook output priority 0;\n"
             f"  udp dport 9 numgen random mod 10 0 log group {GROUP}\n }}\n}}\n")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True,
                   check=True)


@pytest.mark.root
def test_group_taken_error_then_retry_with_backoff(netpair: Any, need_tools: Any) -> None:
    need_tools("nft")
    ns = netpair.b
    holder = NflogSocket(GROUP, 128, 10, 10, netns=ns)
    holder.open()  # another process has the group
    h = AgentHarness(conf(nflog=f"group = {GROUP} probability = 0.1 netns = {ns} timeout = 0.1"),
                     modules={"nflog": NflogModule()})
    try:
        with structlog.testing.capture_logs() as logs:
            h.start()
            failures = [h.agent.health.snapshot().get("nflog.bind_failures", 0)]
            for _ in range(7):  # retries after 1, 2 and 4 s
                h.tick()
                failures.append(h.agent.health.snapshot().get("nflog.bind_failures", 0))
        errors = [e for e in logs if e["event"] == "nflog_bind_failed"]
        assert len(errors) == 1 and errors[0]["log_level"] == "error"  # once per streak
        assert errors[0]["group"] == GROUP and f"group {GROUP}" in errors[0]["reason"]
        assert "already bound by another process" in errors[0]["reason"]
        assert failures == [1, 2, 2, 3, 3, 3, 3, 4]  # backoff 1, 2, 4 s
        assert not h.agent.root_reasons  # rebinding needs two capabilities, not root
        kept = {c for r, caps in h.agent.kept_capabilities.items() if "nflog" in r for c in caps}
        assert kept == {"CAP_NET_ADMIN", "CAP_SYS_ADMIN"}  # netns = ...: setns() too

        holder.close()  # the group comes free: the next retry (8 s later) binds it
        with structlog.testing.capture_logs() as logs:
            h.tick(8)
        assert [e["group"] for e in logs if e["event"] == "nflog_bound"] == [GROUP]

        nft_output_rule(ns)
        sent = netpair.send(ns, "127.0.0.1", 9, 2000, dev="lo")
        h.run_loop(1.0)
        h.tick()
        samples = h.flow_samples()
        lo = 1
        # kernel 1 in 10, sampling 10: no user-space sub-sampling; within 5 sigma
        assert abs(len(samples) - sent / 10) <= 5 * (sent * 0.1 * 0.9) ** 0.5
        s = samples[0]
        assert (s.source.ds_index, s.input, s.output) == (lo, (0, INTERNAL_IFINDEX), (0, lo))
        assert s.sampling_rate == 10
    finally:
        holder.close()
        h.stop()


@pytest.mark.root
def test_missing_namespace_is_an_error_not_a_crash(need_tools: Any) -> None:
    need_tools()
    h = AgentHarness(conf(nflog="group = 5 netns = /nonexistent/hsf-netns"),
                     modules={"nflog": NflogModule()})
    try:
        with structlog.testing.capture_logs() as logs:
            h.start()
            h.tick(3)
        errors = [e for e in logs if e["event"] == "nflog_bind_failed"]
        assert len(errors) == 1 and "does not exist" in errors[0]["reason"]
        assert "nflog" in h.host.states and not h.host.states["nflog"].quarantined
    finally:
        h.stop()
