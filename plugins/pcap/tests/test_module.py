"""The module inside the testing kit's agent, tapping the loopback device of this namespace
(loopback traffic only): config, tap set, batches through the agent, re-rating on reload."""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from typing import Any

import pytest
import structlog
from hostsflow.bootstrap import load
from hostsflow.config import ConfigError
from hostsflow.packet import decode_sampled_header
from hostsflow.samples import DIRECTION_RECEIVED
from hostsflow.sflow.records import INTERNAL_IFINDEX
from hostsflow.testing import AgentHarness
from hostsflow_pcap.config import PcapConfig
from hostsflow_pcap.module import PcapModule

root = pytest.mark.skipif(os.geteuid() != 0, reason="packet capture needs root (CAP_NET_RAW)")

LO = socket.if_nametoindex("lo")


def conf(body: str) -> str:
    return "sflow {\n collector { ip = 127.0.0.1 }\n polling = 0\n" + body + "\n}"


def blast(count: int, size: int = 300) -> int:
    """``count`` UDP datagrams over loopback to a socket that is not read; returns its port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for _ in range(count):
            tx.sendto(b"z" * size, rx.getsockname())
        return rx.getsockname()[1]


def to_port(sample: Any, port: int) -> bool:
    """The sample is one of this test's datagrams: UDP from 127.0.0.1 to ``port``."""
    p = decode_sampled_header(sample.records[0])
    return p is not None and (p.protocol, p.src_ip, p.dst_port) == (17, "127.0.0.1", port)


def test_config_blocks_are_repeatable_and_typed() -> None:
    loaded = load(conf('pcap { dev = lo sampling = 2K promisc = on }\n'
                       'pcap { dev.pattern = "eth[0-9]+" speed = 1G- buffer = 1M }'),
                  "<t>", modules={"pcap": PcapModule()})
    a, b = loaded.config.modules["pcap"]
    assert (a.dev, a.sampling, a.promisc) == ("lo", 2000, True)
    assert b.dev is None and b.dev_pattern.pattern == "eth[0-9]+" and b.buffer == 1_000_000
    assert b.selects("eth0", "physical", 10**10)
    assert not b.selects("eth0", "physical", 10**8)  # below the speed range
    assert not b.selects("eth0", "veth", 10**10)  # veth only when named with dev
    assert PcapConfig(dev="veth1").selects("veth1", "veth", 0)
    with pytest.raises(ConfigError, match="sampling"):
        load(conf("pcap { dev = lo sampling = lots }"), "<t>", modules={"pcap": PcapModule()})


@root
def test_loopback_tap_feeds_batches_with_pool_and_direction() -> None:
    plugin = PcapModule()
    with AgentHarness(conf("pcap { dev = lo sampling = 1 }\npcap { dev = nosuchdev0 }"),
                      modules={"pcap": plugin}) as h:
        assert list(plugin.taps) == ["lo"]  # the absent device is simply not tapped (yet)
        assert [str(ds) for ds in plugin.sflow_data_sources(h.agent)] == [f"0:{LO}"]
        port = blast(300)
        h.run_loop(0.4)
        h.tick()
        samples = h.flow_samples()
        # libpcap shows each loopback packet once (incoming); rate 1 keeps every one.  Only
        # this test's datagrams count: others may use this namespace's lo at the same time.
        ours = [s for s in samples if to_port(s, port)]
        assert len(ours) == 300
        for s in ours:
            assert s.sampling_rate == 1 and (s.source.ds_class, s.source.ds_index) == (0, LO)
            assert s.input == (0, LO) and s.output == (0, INTERNAL_IFINDEX)
            assert s.records[0].frame_length == 300 + 42 + 4
            assert len(s.records[0].header) == 128
        # rate 1: the pool only grows and counted every packet captured (the kernel counts a
        # packet before the tap sees it; the last sample sits at most 2 below the reading).
        # That it counts each loopback packet once, not twice, is checked on a private lo in
        # test_pool.py, where no other traffic shares the device.
        pools = [s.sample_pool for s in samples]
        assert pools == sorted(pools) and pools[-1] >= len(samples) - 2 >= 298
        assert plugin.status()["lo"]["samples"] == len(samples)
    assert plugin.taps == {}  # sflow_final closed it


@root
def test_a_named_device_that_does_not_exist_is_said_once() -> None:
    """``pcap { dev = nosuchif }``: a warning naming the device (once, not every second) and
    the module keeps watching for it."""
    plugin = PcapModule()
    with structlog.testing.capture_logs() as logs:
        with AgentHarness(conf("pcap { dev = nosuchif0 }"), modules={"pcap": plugin}) as h:
            h.tick(3)
            assert plugin.missing == {"nosuchif0"} and plugin.taps == {}
    missing = [e for e in logs if e.get("event") == "pcap_device_missing"]
    assert len(missing) == 1 and missing[0]["dev"] == "nosuchif0", logs
    assert "no such device" in missing[0]["detail"] and missing[0]["log_level"] == "warning"


@root
def test_reload_reattaches_a_new_rate_and_drops_unselected_taps() -> None:
    plugin = PcapModule()
    with AgentHarness(conf("pcap { dev = lo sampling = 20 }"), modules={"pcap": plugin}) as h:
        tap = plugin.taps["lo"]
        new = load(conf("pcap { dev = lo sampling = 50 }"), "<t>", modules={"pcap": PcapModule()})
        h.agent.reload(new.config)
        assert plugin.taps["lo"] is tap and tap.rate == 50  # same socket, new filter
        port = blast(5000, 64)
        h.run_loop(0.4)
        h.tick()
        got = [s for s in h.flow_samples() if s.sampling_rate == 50 and to_port(s, port)]
        # 1 in 50 of 5000: 100 expected, sigma 9.9 (only this test's datagrams count: other
        # loopback traffic, such as the agent's own datagrams, is left out)
        assert 50 <= len(got) <= 150, len(got)
        none = load(conf('pcap { dev.pattern = "nomatch.*" }'), "<t>",
                    modules={"pcap": PcapModule()})
        h.agent.reload(none.config)
        assert plugin.taps == {} and tap.closed


@root
def test_default_ring_follows_the_rate_and_a_set_buffer_stays() -> None:
    """4 MB when (nearly) every packet reaches user space, 1 MB for sparser sampling, chosen
    when the tap opens (a reload re-rates the same tap); a configured buffer is used as is."""
    from hostsflow_pcap.tap import BIG_RING_BYTES, SMALL_RING_BYTES

    plugin = PcapModule()
    with AgentHarness(conf("pcap { dev = lo sampling = 1 }"), modules={"pcap": plugin}) as h:
        first = plugin.taps["lo"]
        assert first.ring_bytes == BIG_RING_BYTES
        h.agent.reload(load(conf("pcap { dev = lo sampling = 100 }"), "<t>",
                            modules={"pcap": PcapModule()}).config)
        assert plugin.taps["lo"] is first and first.rate == 100
        h.agent.reload(load(conf("pcap { dev = lo sampling = 1000 promisc = on }"), "<t>",
                            modules={"pcap": PcapModule()}).config)
        second = plugin.taps["lo"]  # re-opened for the new option, at the new rate
        assert first.closed and (second.rate, second.ring_bytes) == (1000, SMALL_RING_BYTES)
        h.agent.reload(load(conf("pcap { dev = lo sampling = 1 buffer = 2M }"), "<t>",
                            modules={"pcap": PcapModule()}).config)
        third = plugin.taps["lo"]
        assert (third.rate, third.ring_bytes) == (1, 2_000_000)
        h.agent.reload(load(conf("pcap { dev = lo sampling = 100 buffer = 2M }"), "<t>",
                            modules={"pcap": PcapModule()}).config)
        assert plugin.taps["lo"] is third and third.ring_bytes == 2_000_000


@root
def test_samples_built_by_the_tap_say_received_without_a_mac() -> None:
    plugin = PcapModule()
    with AgentHarness(conf("pcap { dev = lo sampling = 1 }"), modules={"pcap": plugin}):
        tap = plugin.taps["lo"]
        port = blast(10)
        batch: list[Any] = []
        deadline = time.monotonic() + 2.0
        while sum(to_port(s, port) for s in batch) < 10 and time.monotonic() < deadline:
            select.select([tap.fileno()], [], [], 0.2)
            drained = tap.drain()
            batch += drained.flow_samples() if drained is not None else []
        ours = [s for s in batch if to_port(s, port)]
        assert len(ours) == 10
        # no MAC on lo: everything the tap sees on it is received, ours and anyone else's
        assert all(s.direction == DIRECTION_RECEIVED for s in batch)
        assert all((s.input, s.output) == (LO, INTERNAL_IFINDEX) for s in ours)
        assert sum(s.drops for s in batch) == 0


@root
def test_speed_change_re_rates_the_open_tap() -> None:
    """The rate follows the core's sampling.<speed> rule when the device's speed changes."""
    from hostsflow.host.interfaces import Interface, InterfaceTable

    def table(speed: int) -> InterfaceTable:
        return InterfaceTable([Interface("lo", LO, speed=speed, up=True, oper_up=True,
                                         loopback=True, kind="loopback")])

    plugin = PcapModule()
    h = AgentHarness(conf("sampling.1G = 50\nsampling.10G = 500\npcap { dev = lo }"),
                     modules={"pcap": plugin}, interfaces=table(10**9))
    with h:
        tap = plugin.taps["lo"]
        assert tap.rate == 50
        # what the agent's rescan installs when it sees the new speed
        h.agent.refresh.table = table(10 * 10**9)
        h.tick()
        assert plugin.taps["lo"] is tap and tap.rate == 500
        h.agent.refresh.table = InterfaceTable([Interface("lo", LO, speed=10**9, up=False,
                                                       loopback=True, kind="loopback")])
        h.tick()
        assert tap.rate == 0  # down: the filter keeps nothing


@root
def test_odd_frames_are_turned_into_samples_without_raising() -> None:
    from hostsflow_pcap.tap import Tap

    tap = Tap("lo", LO, None, 1, snaplen=64, loopback=True)
    try:
        frames = [b"\x01\x02\x03", bytes(13), bytes(12) + b"\x08\x00" + b"\x45" + bytes(49),
                  bytes(12) + b"\x81\x00" + bytes(50)]
        data = b"".join(frames)
        meta, off = b"", 0
        for f in frames:
            meta += struct.pack("=IIII", 1, 2, off, len(f))
            off += len(f)
        samples = tap._build([(data, meta)]).flow_samples()
        assert [s.records[0].frame_length for s in samples] == [7, 17, 68, 68]
        assert [s.sample_pool for s in samples] == sorted(s.sample_pool for s in samples)
    finally:
        tap.close()
