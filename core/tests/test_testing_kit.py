"""The testing kit (hostsflow.testing.AgentHarness) as a module author uses it: explicit
modules, a driven clock, flow samples in, decoded records out.  Also pins the behaviour the
kit exposes: holds released late and timed out, phase-2 ordering, the counter polling
schedule, the tick/poll/tock/flush order and fd readers through the real asyncio loop."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import structlog

import hostsflow
from hostsflow.config import ConfigError, on_off, option, u32 as conf_u32
from hostsflow.samples import DataSource, FlowSample
from hostsflow.sflow.records import Record, SampledHeader, counter_record, flow_record
from hostsflow.sflow.xdr import string, u32
from hostsflow.testing import AgentHarness

import attrs

CONF = "sflow { collector { ip = 127.0.0.1 } polling = %d %s }"
ENTERPRISE = 4095  # a private enterprise number used only by these tests


@flow_record(1, enterprise=ENTERPRISE)
class Mark(Record):
    """A test flow record: which module and phase added it."""

    who: str = string(64)
    phase: int = u32()


@counter_record(1, enterprise=ENTERPRISE)
class Tally(Record):
    """A test counter record: the agent clock at poll time (whole seconds)."""

    at: int = u32()
    source_index: int = u32()


assert Mark.tag() == (ENTERPRISE << 12) | 1


class Holder:
    """Phase 1: holds every sample (released by the test); phase 2: records what it saw."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.holds: list[Any] = []
        self.phase2_saw: list[dict[str, Any]] = []

    @hostsflow.hookimpl
    def sflow_flow_sample(self, sample: FlowSample) -> None:
        self.holds.append(sample.hold(self.name))
        sample.stash[self.name] = "phase1"
        sample.add(Mark(self.name, 1))

    @hostsflow.hookimpl
    def sflow_flow_sample_released(self, sample: FlowSample) -> None:
        self.phase2_saw.append(dict(sample.stash))
        sample.add(Mark(self.name, 2))

    def release_all(self) -> None:
        for h in self.holds:
            h.release()


def tcp_sample(h: AgentHarness) -> FlowSample:
    return h.make_sample(tcp=("10.0.0.1", 40000, "10.0.0.2", 80))


# ---------------------------------------------------------------- explicit modules


def test_only_the_given_modules_are_loaded_no_entry_point_scan() -> None:
    with AgentHarness(CONF % (0, ""), modules={"a": Holder("a")}) as h:
        assert set(h.host.states) == {"a"}
    # a block for a module that is not in `modules` is unknown, even if it is installed
    with pytest.raises(ConfigError, match="unknown module 'pcap'"):
        AgentHarness(CONF % (0, "pcap { dev = lo }"), modules={"a": Holder("a")})


@attrs.frozen
class KnobConfig:
    on: bool = option(False, converter=on_off, help="a switch")
    n: int = option(3, converter=conf_u32(1, 10), help="a number")


class Knob:
    seen: Any = None

    @hostsflow.hookimpl
    def sflow_declare_config(self, registry: Any) -> None:
        registry.block("knob", KnobConfig, help="a test block")

    @hostsflow.hookimpl
    def sflow_configure(self, agent: Any) -> None:
        self.seen = agent.module_config("knob")


def test_module_config_reaches_the_module() -> None:
    k = Knob()
    with AgentHarness(CONF % (0, "knob { on = on n = 7 }"), modules={"knob": k}):
        assert k.seen == KnobConfig(True, 7)
    with pytest.raises(ConfigError, match=r"<test>:1: .*n"):
        AgentHarness(CONF % (0, "knob { n = 11 }"), modules={"knob": Knob()})


# ---------------------------------------------------------------- holds and phase 2


def test_hold_released_late_is_sent_with_its_phase2_records() -> None:
    a, b = Holder("a"), Holder("b")
    with AgentHarness(CONF % (0, ""), modules={"a": a, "b": b}) as h:
        s = tcp_sample(h)
        h.feed(s)
        assert h.held() == [s] and a.phase2_saw == [] and b.phase2_saw == []
        h.advance(0.1)
        a.release_all()
        assert h.held() == [s] and a.phase2_saw == []  # b still holds it: no phase 2 yet
        h.advance(0.1)
        b.release_all()
        assert h.held() == []
        # phase 2 ran once per module, after both holds, and saw both phase-1 stashes
        assert a.phase2_saw == b.phase2_saw == [{"a": "phase1", "b": "phase1"}]
        h.tick()
        (sample,) = h.flow_samples()
        marks = [(r.who, r.phase) for r in sample.records if isinstance(r, Mark)]
        assert isinstance(sample.records[0], SampledHeader)
        # every phase-1 record comes before every phase-2 record
        assert sorted(marks, key=lambda m: m[1]) == marks and len(marks) == 4
        assert {m for m in marks if m[1] == 1} == {("a", 1), ("b", 1)}
        assert h.agent.health.snapshot().get("holds_timed_out", 0) == 0


def test_hold_never_released_times_out_at_hold_timeout() -> None:
    a = Holder("slow")
    with AgentHarness(CONF % (0, ""), modules={"slow": a}) as h:
        h.agent.hold_timeout = 0.4
        s = tcp_sample(h)
        with structlog.testing.capture_logs() as logs:
            h.feed(s)
            h.advance(0.39)
            assert h.held() == [s]
            h.advance(0.02)
            assert h.held() == []
            h.feed(tcp_sample(h))  # a second timeout while the first is still "active": quiet
            h.advance(0.5)
        assert len(a.phase2_saw) == 2  # phase 2 still runs on a timed-out sample
        warnings = [e for e in logs if e["event"] == "sample_hold_timed_out"]
        assert len(warnings) == 1 and warnings[0]["owners"] == ["slow"]
        assert h.agent.health.snapshot()["holds_timed_out"] == 2
        a.release_all()  # a release after the timeout is ignored: nothing is sent twice
        h.tick()
        assert len(h.flow_samples()) == 2


def test_tick_releases_expired_holds_and_flush_releases_everything() -> None:
    a = Holder("a")
    with AgentHarness(CONF % (0, ""), modules={"a": a}) as h:
        h.feed(tcp_sample(h))
        h.tick()  # one second > hold_timeout: released and sent in this second's datagram
        assert len(h.flow_samples()) == 1
        h.feed(tcp_sample(h))
        h.flush()  # test helper: as if every deadline passed, then send
        assert len(h.flow_samples()) == 2
        seqs = [s.sequence for s in h.flow_samples()]
        assert seqs == [1, 2]


def test_unheld_samples_pass_straight_through_in_order() -> None:
    with AgentHarness(CONF % (0, ""), modules={}) as h:
        h.feed(*[h.make_sample(udp=("10.0.0.1", 1000 + i, "10.0.0.2", 53)) for i in range(5)])
        assert h.held() == []
        h.tick()
        samples = h.flow_samples()
        assert [s.sequence for s in samples] == [1, 2, 3, 4, 5]
        assert all(s.source == DataSource(0, 2) and s.sampling_rate == 1 for s in samples)


# ---------------------------------------------------------------- counters and the second


class Sources:
    """Names data sources 3:1 and 3:2 (until told otherwise) and returns a Tally for each."""

    def __init__(self) -> None:
        self.sources = [DataSource(3, 1), DataSource(3, 2)]
        self.calls: list[str] = []

    @hostsflow.hookimpl
    def sflow_tick(self, now: float) -> None:
        self.calls.append("tick")

    @hostsflow.hookimpl
    def sflow_data_sources(self) -> list[DataSource]:
        return list(self.sources)

    @hostsflow.hookimpl
    def sflow_poll_counters(self, agent: Any, source: DataSource) -> list[Any] | None:
        if source.ds_class != 3:
            return None
        self.calls.append(f"poll {source}")
        return [Tally(int(agent.now()), source.ds_index)]

    @hostsflow.hookimpl
    def sflow_tock(self, now: float) -> None:
        self.calls.append("tock")


def test_counter_polling_schedule() -> None:
    p = Sources()
    with AgentHarness(CONF % (5, ""), modules={"src": p}, seed=1) as h:
        start = h.agent.now()
        h.tick(20)
        for index in (1, 2):
            samples = h.counter_samples(DataSource(3, index))
            times = [s.record(Tally).at - start for s in samples]
            assert len(times) == 4, times
            assert 1 <= times[0] <= 5  # a random phase within the first interval
            assert [b - a for a, b in zip(times, times[1:])] == [5, 5, 5]
            assert [s.sequence for s in samples] == [1, 2, 3, 4]
        # a source nobody names any more is forgotten
        p.sources = [DataSource(3, 1)]
        before = len(h.counter_samples(DataSource(3, 2)))
        h.tick(10)
        assert len(h.counter_samples(DataSource(3, 2))) == before
        assert len(h.counter_samples(DataSource(3, 1))) == 6


def test_same_seed_same_phases() -> None:
    def phases(seed: int) -> list[int]:
        with AgentHarness(CONF % (10, ""), modules={"src": Sources()}, seed=seed) as h:
            t0 = h.agent.now()
            h.tick(10)
            return [s.record(Tally).at - t0 for s in h.counter_samples()]

    assert phases(3) == phases(3)


def test_second_order_is_tick_poll_tock_then_flush() -> None:
    p = Sources()
    with AgentHarness(CONF % (1, ""), modules={"src": p}) as h:
        h.tick()
        assert p.calls == ["tick", "poll 3:1", "poll 3:2", "tock"]
        assert len(h.datagrams) == 1  # flushed at the end of the second


def test_poll_now_polls_everything_whatever_the_phase() -> None:
    with AgentHarness(CONF % (300, ""), modules={"src": Sources()}) as h:
        h.poll_now()
        assert sorted(s.source.ds_index for s in h.counter_samples()) == [1, 2]


def test_polling_zero_means_no_counters() -> None:
    with AgentHarness(CONF % (0, ""), modules={"src": Sources()}) as h:
        h.tick(5)
        assert h.counter_samples() == []


def test_duplicate_counter_record_is_dropped_with_one_warning() -> None:
    with structlog.testing.capture_logs() as logs:
        with AgentHarness(CONF % (1, ""), modules={"x": Sources(), "y": Sources()}) as h:
            h.tick(3)
            for s in h.counter_samples():
                assert len([r for r in s.records if isinstance(r, Tally)]) == 1
    dups = [e for e in logs if e["event"] == "duplicate_counter_record"]
    assert len(dups) == 2  # once per source, not once per second


def test_host_poller_on_request() -> None:
    with AgentHarness(CONF % (1, ""), modules={}, host_poller=True) as h:
        h.tick(2)
        assert any(s.source == DataSource(2, 1) for s in h.counter_samples())


# ---------------------------------------------------------------- the real event loop


class Reader:
    """A capture-style module: reads frames from a socket in sflow_start's reader."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @hostsflow.hookimpl
    def sflow_start(self, agent: Any) -> None:
        agent.add_reader(self.sock.fileno(), lambda: self.read(agent))

    def read(self, agent: Any) -> None:
        frame = self.sock.recv(2048)
        agent.take_samples([FlowSample(DataSource(0, 7), 10,
                                       [SampledHeader(1, len(frame) + 4, 4, frame[:128])])])

    @hostsflow.hookimpl
    def sflow_final(self, agent: Any) -> None:
        agent.remove_reader(self.sock.fileno())


def test_run_loop_drives_registered_readers() -> None:
    from hostsflow.testing import ethernet_frame

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        with AgentHarness(CONF % (0, ""), modules={"rd": Reader(b)}) as h:
            frame = ethernet_frame(udp=("10.0.0.1", 1, "10.0.0.2", 2), payload=b"hi")
            a.send(frame)
            a.send(frame)
            h.run_loop(0.2)
            h.tick()
            samples = h.flow_samples()
            assert len(samples) == 2
            assert samples[0].source == DataSource(0, 7) and samples[0].sampling_rate == 10
            assert samples[0].records[0].header == frame
    finally:
        a.close()
        b.close()
