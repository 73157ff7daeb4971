"""The packet path without per-sample hooks (Agent._encode_all) numbers and encodes exactly as
the general path does: per-source sequence numbers without gaps across interleaved sources and
batches, an unencodable sample dropped without using a number, and the same bytes as with a
no-op module in the way."""

from __future__ import annotations

from typing import Any

from hostsflow import hookimpl
from hostsflow.sflow.records import SampledHeader
from hostsflow.testing import AgentHarness

CONF = "sflow { collector { ip = 127.0.0.1 } }"


class Noop:
    @hookimpl
    def sflow_flow_sample(self, agent: Any, sample: Any) -> None:
        pass


def _batch(h: AgentHarness, ifindexes: list[int]) -> list[Any]:
    return [h.make_sample(udp=("10.0.0.1", 1000 + i, "10.0.0.2", 53), ifindex=x)
            for i, x in enumerate(ifindexes)]


def test_sequence_numbers_per_source_across_batches() -> None:
    with AgentHarness(CONF) as h:
        assert not h.agent.pipeline.phase1 and not h.agent.pipeline.phase2
        h.feed(*_batch(h, [2, 2, 3, 2, 3, 3]))
        h.feed(*_batch(h, [3, 2]))
        h.flush()
        got = [(s.source.ds_index, s.sequence) for s in h.flow_samples()]
    assert got == [(2, 1), (2, 2), (3, 1), (2, 3), (3, 2), (3, 3), (3, 4), (2, 4)]
    assert h.agent.health.snapshot()["flow_samples_taken"] == 8


def test_unencodable_sample_is_dropped_without_a_gap() -> None:
    with AgentHarness(CONF) as h:
        batch = _batch(h, [2, 2, 2])
        batch[1].records = [SampledHeader(1, 10, 4, None)]  # type: ignore[arg-type]
        h.feed(*batch)
        h.flush()
        assert [s.sequence for s in h.flow_samples()] == [1, 2]
        assert h.agent.health.snapshot()["dropped.unencodable"] == 1


def test_same_bytes_as_the_general_path() -> None:
    fast, general = AgentHarness(CONF), AgentHarness(CONF, modules={"noop": Noop()})
    for h in (fast, general):
        with h:
            h.feed(*_batch(h, [2, 3, 2, 2]))
            h.flush()
    assert general.agent.pipeline.phase1 and not fast.agent.pipeline.phase1
    assert [s for d in fast.datagrams for s in d.samples] == \
        [s for d in general.datagrams for s in d.samples]
