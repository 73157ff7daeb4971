"""A seeded mutator against the collector tools' whole input path, bounded in time.

The view, top and decode take datagrams from anyone on the network.  Valid datagrams (from the
agent's own encoder: service names, host counters with floats, flow samples with entities and
TCP info, IPv4 and IPv6) are mutated (bytes flipped or set to edge values, 32-bit words
replaced, cut short, spliced together, parts repeated) and each result goes where a real one
would: ``Aggregator.feed`` and its snapshot, chart point and flow breakdown as the view serves
them (strict JSON: no NaN or Infinity), top's screen, and ``decode`` (text and ``--json``).
Nothing may raise; every valid datagram fed between the mutants still counts.

Each run lasts ``HOSTSFLOW_FUZZ_SECONDS`` (default 4) and starts from ``HOSTSFLOW_FUZZ_SEED``
(default: a new one, printed, so a failure can be replayed).  The datagram decoder, the config
parser and the netlink and D-Bus readers have Hypothesis properties next to their own tests
(test_datagram, test_config_fuzz, test_sockets_diag, the nflog/ulog tests, test_faults_readers)."""

from __future__ import annotations

import io
import json
import math
import os
import random
import struct
import time

import pytest
from hostsflow.samples import DataSource
from hostsflow.sflow.datagram import DatagramHeader, encode_datagram
from hostsflow.sflow.records import ExtendedEntities, ExtendedTcpInfo, HostCpu
from hostsflow.testing import encoded_flow_sample, encoded_names_sample, ethernet_frame
from hostsflow.tools.aggregate import Aggregator
from hostsflow.tools.decode import Printer
from hostsflow.tools.flows import GROUP_FIELDS

SECONDS = float(os.environ.get("HOSTSFLOW_FUZZ_SECONDS", "4"))
EDGES = (0, 1, 0x7F, 0x80, 0xFF)
WORDS = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFF, 0x10000, 2210, 2209, 3)


def _valid() -> list[bytes]:
    tcp = ExtendedTcpInfo(dir=2, snd_mss=1460, unacked=3, lost=1, retrans=2, pmtu=1500,
                          rtt=3000, rttvar=200, snd_cwnd=10, min_rtt=1000)
    v4 = ethernet_frame(tcp=("198.51.100.7", 40000, "192.0.2.1", 443), payload=bytes(300))
    v6 = ethernet_frame(udp=("2001:db8::7", 53, "2001:db8::1", 5353), payload=bytes(80))

    flow = encoded_flow_sample
    names = [encoded_names_sample(DataSource(3, i), n)
             for i, n in ((1, "web.service"), (2, "__proto__"), (3, "other"))]
    host = encoded_names_sample(DataSource(2, 1), "web1",
                                HostCpu(load_one=math.nan, load_five=math.inf, load_fifteen=0.5))
    header = DatagramHeader("192.0.2.1", 0, 1, 1000)
    return [
        encode_datagram(header, [host, *names]),
        encode_datagram(header, [flow(v4, 10, ExtendedEntities(0, 0, 3, 1), tcp),
                                 flow(v6, 1, ExtendedEntities(3, 2, 0, 0)), flow(v4, 400)]),
        encode_datagram(DatagramHeader("2001:db8::1", 7, 9, 5), [names[2], flow(v6, 3)]),
    ]


VALID = _valid()


def mutate(rng: random.Random, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(6)
        pos = rng.randrange(len(data)) if data else 0
        if op == 0 and data:
            data[pos] = rng.randrange(256)
        elif op == 1 and data:
            data[pos] = rng.choice(EDGES)
        elif op == 2 and len(data) >= 4:
            word = pos & ~3
            data[word:word + 4] = struct.pack(">I", rng.choice(WORDS))
        elif op == 3:
            del data[rng.randrange(len(data) + 1):]
        elif op == 4:
            other = rng.choice(VALID)
            cut = rng.randrange(len(other) + 1)
            data = data[:pos] + bytearray(other[cut:])
        else:
            j = min(len(data), pos + rng.randint(1, 64))
            data[j:j] = data[pos:j] * rng.randint(1, 4)
    return bytes(data[:9000])


def _strict(value: object) -> str:
    return json.dumps(value, allow_nan=False)


def test_collector_path_survives_mutated_datagrams(capsys):
    seed = int(os.environ.get("HOSTSFLOW_FUZZ_SEED", str(random.SystemRandom().randrange(2**32))))
    rng = random.Random(seed)
    clock = [1_000_000.0]
    agg = Aggregator(window=2, clock=lambda: clock[0])
    printer, as_json = Printer(io.StringIO()), Printer(io.StringIO(), json=True)
    rich = pytest.importorskip("rich.console")
    from hostsflow.tools.top import render

    console = rich.Console(file=io.StringIO(), width=140)
    deadline = time.monotonic() + SECONDS
    mutants = valid_fed = 0
    try:
        while time.monotonic() < deadline:
            for _ in range(50):
                data = mutate(rng, rng.choice(VALID))
                agg.feed(data)
                printer.feed(data, "192.0.2.9:6343")
                as_json.feed(data)
                mutants += 1
            before = agg.stats.datagrams
            agg.feed(rng.choice(VALID))  # a real datagram among the garbage still counts
            assert agg.stats.datagrams == before + 1
            valid_fed += 1
            clock[0] += 0.37
            snap, point = agg.tick()
            _strict(snap.to_dict())
            _strict(point)
            keys = tuple(rng.sample(GROUP_FIELDS, rng.randint(1, 3)))
            _strict(agg.flow_query(keys, []))
            console.print(render(snap))
            for line in as_json.out.getvalue().splitlines():  # type: ignore[attr-defined]
                json.loads(line, parse_constant=lambda word: pytest.fail(f"not JSON: {word}"))
            as_json.out = io.StringIO()
            printer.out = io.StringIO()
    except BaseException:
        print(f"replay with HOSTSFLOW_FUZZ_SEED={seed}")
        raise
    decoded = agg.stats.datagrams - agg.stats.malformed
    with capsys.disabled():
        print(f"\ncollector fuzz: {mutants} mutated datagrams in {SECONDS:g} s (seed {seed}), "
              f"{agg.stats.malformed} malformed, {decoded} decoded ({valid_fed} valid ones "
              f"among them), {as_json.stats.malformed} malformed in decode")
    assert agg.stats.datagrams == mutants + valid_fed
    assert as_json.stats.malformed == printer.stats.malformed == agg.stats.malformed
    assert agg.stats.malformed > 0 and decoded > valid_fed  # both kinds of mutant were made
