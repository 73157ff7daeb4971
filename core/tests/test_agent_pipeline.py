"""The agent's packet path: a record that cannot be encoded loses its own sample only."""

from __future__ import annotations

from hostsflow import hookimpl
from hostsflow.sflow.records import ExtendedEntities
from hostsflow.testing import AgentHarness


class BadRecordModule:
    """Adds an extended_entities record with a value no u32 can hold, to every other sample."""

    def __init__(self) -> None:
        self.n = 0

    @hookimpl
    def sflow_flow_sample(self, sample):
        self.n += 1
        if self.n % 2 == 0:
            sample.add(ExtendedEntities(src_class=-1))


def test_unencodable_record_drops_only_its_sample():
    with AgentHarness(modules={"bad": BadRecordModule()}) as h:
        h.feed(*[h.make_sample(udp=("10.0.0.1", 1000 + i, "10.0.0.2", 53)) for i in range(6)])
        h.tick()
        samples = h.flow_samples()
        assert [s.records[0].header[34:36] for s in samples] == [
            (1000 + i).to_bytes(2, "big") for i in (0, 2, 4)
        ]
        assert [s.sequence for s in samples] == [1, 2, 3], "no gap in the sample sequence"
        assert h.agent.health.counters["dropped.unencodable"] == 3
