"""sFlow datagram encoder and decoder: round trips, layouts, malformed input, the decode tool."""

from __future__ import annotations

import io
import json
import signal
import socket
import struct
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostsflow.packet import decode_sampled_header
from hostsflow.samples import DataSource, FlowSample
from hostsflow.sflow.datagram import (
    DatagramHeader,
    DecodedCounterSample,
    DecodedFlowSample,
    SflowDecodeError,
    UnknownSample,
    decode_datagram,
    encode_counter_sample,
    encode_datagram,
    encode_flow_sample,
)
from hostsflow.sflow.records import (
    INTERNAL_IFINDEX,
    Adapter,
    ExtendedEntities,
    ExtendedTcpInfo,
    GenericInterface,
    HostAdapters,
    HostCpu,
    HostDescr,
    PortName,
    SampledHeader,
    UnknownRecord,
)
from hostsflow.tools.decode import decode_file, main, parse_listen, run_decode
from hostsflow.tools.render import datagram_dict, datagram_lines

FRAME = bytes.fromhex(
    "525400ddeeff525400aabbcc0800"  # Ethernet
    "4500003c1c4640004006b1e6c0a80001c0a800c7"  # IPv4 192.168.0.1 > 192.168.0.199, TCP
    "d43101bb0000000100000000a0027210fe300000020405b40402080a00000001000000000103030a"
)


def _flow(records=None, **kw) -> FlowSample:
    args = dict(source=DataSource(0, 7), sampling_rate=512, sample_pool=5120, drops=3,
                input=7, output=0)
    args.update(kw)
    if records is None:
        records = [SampledHeader(1, len(FRAME) + 4, 4, FRAME)]
    return FlowSample(records=records, **args)


@contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging) if the block takes longer than ``seconds``."""

    def fire(signum, frame):  # noqa: ARG001
        raise TimeoutError(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------- encoding layouts


def test_flow_sample_layout_by_hand():
    sample = _flow()
    raw = encode_flow_sample(42, sample)
    tag, length = struct.unpack_from(">II", raw)
    assert tag == 3 and length == len(raw) - 8
    fixed = struct.unpack_from(">11I", raw, 8)
    assert fixed == (42, 0, 7, 512, 5120, 3, 0, 7, 0, 0, 1)
    rtag, rlen, proto, flen, stripped, hlen = struct.unpack_from(">6I", raw, 52)
    assert (rtag, proto, flen, stripped, hlen) == (1, 1, len(FRAME) + 4, 4, len(FRAME))
    assert rlen == 16 + len(FRAME) + (-len(FRAME) & 3)
    assert raw[76:76 + len(FRAME)] == FRAME
    assert len(raw) == 76 + len(FRAME) + (-len(FRAME) & 3)


@pytest.mark.parametrize("hlen", [0, 1, 2, 3, 4, 5, 127, 128])
def test_fast_path_equals_generic_record_encoding(hlen):
    """The one-sampled_header fast path gives the bytes the record codec gives."""
    hdr = SampledHeader(1, 1514, 4, bytes(range(hlen)))
    fast = encode_flow_sample(9, _flow([hdr]))
    generic_body = struct.pack(">11I", 9, 0, 7, 512, 5120, 3, 0, 7, 0, 0, 1) + hdr.encode()
    assert fast == struct.pack(">II", 3, len(generic_body)) + generic_body
    # and the general path (two records) frames the same record identically
    two = encode_flow_sample(9, _flow([hdr, ExtendedEntities(3, 5, 0, 0)]))
    assert two[52:52 + len(hdr.encode())] == hdr.encode()


def test_flow_sample_round_trip_with_several_records():
    recs = [SampledHeader(1, 1518, 4, FRAME), ExtendedEntities(3, 100001, 0, 0),
            ExtendedTcpInfo(dir=2, snd_mss=1448, rtt=12345, min_rtt=9876)]
    sample = _flow(recs, input=INTERNAL_IFINDEX, output=0x80000002)  # output: "multiple 2"
    hdr = DatagramHeader("10.0.0.1", 3, 77, 5000)
    d = decode_datagram(encode_datagram(hdr, [encode_flow_sample(1, sample)]))
    assert (d.version, d.agent_address, d.sub_agent_id, d.sequence, d.uptime) == (
        5, "10.0.0.1", 3, 77, 5000)
    (s,) = d.samples
    assert isinstance(s, DecodedFlowSample) and s.expanded and s.tag == "0:3"
    assert (s.sequence, s.source, s.sampling_rate, s.sample_pool, s.drops) == (
        1, DataSource(0, 7), 512, 5120, 3)
    assert s.input == (0, INTERNAL_IFINDEX)
    assert s.output == (2, 2)
    assert s.records == recs


def test_counter_sample_round_trip():
    recs = [GenericInterface(ifIndex=2, ifSpeed=10**10, ifInOctets=2**40, ifStatus=3),
            PortName("eth0"), HostDescr("h", bytes(range(16)), 3, 2, "6.1"),
            HostAdapters([Adapter(2, [b"\x52\x54\x00\x00\x00\x01", b"\x02" * 6]), Adapter(5)]),
            HostCpu(load_one=0.5, cpu_user=7, cpu_guest_nice=11)]
    raw = encode_counter_sample(2**32 + 5, DataSource(2, 1), recs)
    assert struct.unpack_from(">6I", raw)[:6] == (4, len(raw) - 8, 5, 2, 1, len(recs))
    d = decode_datagram(encode_datagram(DatagramHeader("2001:db8::1"), [raw]))
    assert d.agent_address == "2001:db8::1"
    (s,) = d.samples
    assert isinstance(s, DecodedCounterSample) and s.sequence == 5 and s.source == DataSource(2, 1)
    assert s.records == recs


def test_datagram_header_layout_v4_and_v6():
    v4 = encode_datagram(DatagramHeader("192.0.2.10", 1, 2**32 + 1, 2**33 + 9), [])
    assert v4 == struct.pack(">II4sIIII", 5, 1, socket.inet_aton("192.0.2.10"), 1, 1, 9, 0)
    v6 = encode_datagram(DatagramHeader("fe80::1", 0, 1, 2), [])
    assert v6 == struct.pack(">II16sIIII", 5, 2, socket.inet_pton(socket.AF_INET6, "fe80::1"),
                             0, 1, 2, 0)
    with pytest.raises(ValueError):
        encode_datagram(DatagramHeader("not-an-address"), [])


def test_counters_wrap_at_32_bits():
    raw = encode_flow_sample(2**32 + 1, _flow(sample_pool=2**32 + 10, drops=2**32))
    s = decode_datagram(encode_datagram(DatagramHeader("127.0.0.1"), [raw])).samples[0]
    assert (s.sequence, s.sample_pool, s.drops) == (1, 10, 0)


# ---------------------------------------------------------------- decoding forms


def test_compact_flow_and_counter_samples():
    """Formats 0:1 and 0:2 (source id and interfaces packed in one word) are read too."""
    rec = SampledHeader(1, 100, 4, FRAME).encode()
    body = struct.pack(">7I", 11, (3 << 24) | 123, 64, 640, 1, 5, (1 << 30) | 9)
    body += struct.pack(">I", 1) + rec
    flow = struct.pack(">II", 1, len(body)) + body
    crec = GenericInterface(ifIndex=5).encode()
    cbody = struct.pack(">3I", 12, (0 << 24) | 5, 1) + crec
    cnt = struct.pack(">II", 2, len(cbody)) + cbody
    d = decode_datagram(encode_datagram(DatagramHeader("10.1.1.1"), [flow, cnt]))
    f, c = d.samples
    assert not f.expanded and f.tag == "0:1"
    assert (f.sequence, f.source, f.sampling_rate, f.sample_pool, f.drops) == (
        11, DataSource(3, 123), 64, 640, 1)
    assert f.input == (0, 5) and f.output == (1, 9)
    assert f.records == [SampledHeader(1, 100, 4, FRAME)]
    assert not c.expanded and c.tag == "0:2" and c.source == DataSource(0, 5)
    assert c.records == [GenericInterface(ifIndex=5)]


def test_unknown_records_and_samples_are_kept():
    unknown_flow = struct.pack(">II", (9999 << 12) | 7, 8) + b"abcdefgh"
    body = struct.pack(">11I", 1, 0, 1, 1, 1, 0, 0, 1, 0, 2, 1) + unknown_flow
    flow = struct.pack(">II", 3, len(body)) + body
    discard = struct.pack(">II", 5, 8) + b"\0" * 8
    d = decode_datagram(encode_datagram(DatagramHeader("10.1.1.1"), [flow, discard]))
    assert d.samples[0].records == [UnknownRecord("flow", 9999, 7, b"abcdefgh")]
    assert d.samples[1] == UnknownSample(0, 5, b"\0" * 8)
    # an UnknownRecord re-encodes to its own bytes
    assert d.samples[0].records[0].encode() == unknown_flow


def test_host_cpu_68_byte_form():
    body = HostCpu(load_one=1.5, cpu_user=3, cpu_steal=4).encode_body()[:68]
    rec = struct.pack(">II", 2003, 68) + body
    cbody = struct.pack(">4I", 1, 2, 1, 1) + rec
    d = decode_datagram(encode_datagram(DatagramHeader("10.1.1.1"),
                                        [struct.pack(">II", 4, len(cbody)) + cbody]))
    assert d.samples[0].records == [HostCpu(load_one=1.5, cpu_user=3)]


# ---------------------------------------------------------------- malformed input

GOOD = encode_datagram(DatagramHeader("192.0.2.1", 0, 1, 1), [
    encode_flow_sample(1, _flow([SampledHeader(1, 64, 4, FRAME[:54]),
                                 ExtendedEntities(3, 1, 0, 0)])),
    encode_counter_sample(1, DataSource(2, 1), [HostDescr("host", bytes(16), 3, 2, "6.1"),
                                                HostAdapters([Adapter(1, [b"\1" * 6])])]),
])


@pytest.mark.parametrize("data,message", [
    (b"", "datagram header: truncated"),
    (struct.pack(">II", 4, 1) + bytes(24), "version 4"),
    (struct.pack(">II", 5, 3) + bytes(24), "agent address type 3"),
    (struct.pack(">II4sIIII", 5, 1, bytes(4), 0, 0, 0, 1), "sample 0: truncated"),
    (struct.pack(">II4sIIII", 5, 1, bytes(4), 0, 0, 0, 1) + struct.pack(">II", 3, 400),
     "length 400 runs past the datagram"),
    (struct.pack(">II4sIIII", 5, 1, bytes(4), 0, 0, 0, 1) + struct.pack(">II", 3, 6) + bytes(6),
     "not a multiple of 4"),
    (GOOD + b"\0\0\0\0", "4 bytes left after the 2 samples"),
    (GOOD[:-4], "runs past"),
])
def test_malformed_datagrams_raise_clear_errors(data, message):
    with pytest.raises(SflowDecodeError, match=message):
        decode_datagram(data)


def test_record_errors_name_the_sample_and_record():
    # host_descr whose hostname length word claims 200 bytes (over string<64>)
    bad = bytearray(GOOD)
    pos = GOOD.index(b"\0\0\0\x04host")
    bad[pos:pos + 4] = struct.pack(">I", 200)
    with pytest.raises(SflowDecodeError, match=r"sample 1 record 0 \(0:2000.*HostDescr"):
        decode_datagram(bytes(bad))
    # a record count larger than the records present
    bad = bytearray(GOOD)
    bad[28 + 48:28 + 52] = struct.pack(">I", 3)
    with pytest.raises(SflowDecodeError, match="sample 0 record 2: truncated"):
        decode_datagram(bytes(bad))
    # a record count smaller than the records present
    bad[28 + 48:28 + 52] = struct.pack(">I", 1)
    with pytest.raises(SflowDecodeError, match="sample 0: 24 bytes left after its 1 records"):
        decode_datagram(bytes(bad))


def test_huge_counts_fail_fast():
    data = struct.pack(">II4sIIII", 5, 1, bytes(4), 0, 0, 0, 0xFFFFFFFF)
    data += encode_counter_sample(1, DataSource(0, 1), [])
    with watchdog(2), pytest.raises(SflowDecodeError):
        decode_datagram(data)
    adapters = struct.pack(">I", 0xFFFFFFFF) + struct.pack(">II", 1, 0) * 3
    rec = struct.pack(">II", 2001, len(adapters)) + adapters
    body = struct.pack(">4I", 1, 2, 1, 1) + rec
    data = encode_datagram(DatagramHeader("10.0.0.1"), [struct.pack(">II", 4, len(body)) + body])
    with watchdog(2), pytest.raises(SflowDecodeError, match="0:2001.*host_adapters"):
        decode_datagram(data)


_VALID = [GOOD]
for _name in ("full.bin", "counters.bin"):
    for _base in (Path(__file__).resolve().parents[2].parent / "shared", Path("/work/shared")):
        if (_base / "vectors" / _name).exists():
            _VALID.append((_base / "vectors" / _name).read_bytes())
            break


def _check_decode(data: bytes) -> None:
    try:
        d = decode_datagram(data)
    except SflowDecodeError:
        return
    # whatever decodes also renders and re-parses its headers without raising
    datagram_lines(d)
    json.dumps(datagram_dict(d))
    for s in d.samples:
        for r in getattr(s, "records", []):
            if isinstance(r, SampledHeader):
                decode_sampled_header(r)


FUZZ = settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes(data):
    with watchdog(5):
        _check_decode(data)


@FUZZ
@given(st.sampled_from(_VALID), st.lists(st.tuples(st.integers(0, 1400), st.integers(0, 255)),
                                         min_size=1, max_size=8))
def test_fuzz_mutated_bytes(base, edits):
    data = bytearray(base)
    for pos, value in edits:
        data[pos % len(data)] = value
    with watchdog(5):
        _check_decode(bytes(data))


@FUZZ
@given(st.sampled_from(_VALID), st.integers(0, 1400), st.integers(0, 0xFFFFFFFF))
def test_fuzz_words_and_truncation(base, pos, word):
    pos = pos % len(base) & ~3
    data = base[:pos] + struct.pack(">I", word) + base[pos + 4:]
    with watchdog(5):
        _check_decode(data)
        _check_decode(base[:pos])
        _check_decode(base + base[pos:])


# ---------------------------------------------------------------- the decode tool


def test_parse_listen_forms():
    assert parse_listen("0.0.0.0:6343") == (socket.AF_INET, "0.0.0.0", 6343)
    assert parse_listen("6344") == (socket.AF_INET, "0.0.0.0", 6344)
    assert parse_listen("[::1]:6345") == (socket.AF_INET6, "::1", 6345)
    assert parse_listen("::") == (socket.AF_INET6, "::", 6343)
    assert parse_listen("127.0.0.1") == (socket.AF_INET, "127.0.0.1", 6343)
    for bad in ("1.2.3.4:x", "[::1", "[::1]x", "1.2.3.4:70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)


@pytest.mark.parametrize("family,listen", [(socket.AF_INET, "127.0.0.1:0"),
                                           (socket.AF_INET6, "[::1]:0")])
@pytest.mark.parametrize("as_json", [False, True])
def test_run_decode_prints_datagrams_and_counts_malformed(family, listen, as_json):
    out = io.StringIO()
    bound: list = []
    result: list = []
    t = threading.Thread(target=lambda: result.append(
        run_decode(listen, json=as_json, count=3, out=out, timeout=10, on_ready=bound.append)))
    t.start()
    deadline = time.monotonic() + 5
    while not bound and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bound, "run_decode did not start listening"
    with socket.socket(family, socket.SOCK_DGRAM) as tx:
        tx.sendto(GOOD, bound[0][:2])
        tx.sendto(b"\0\0\0\5garbage", bound[0][:2])
        tx.sendto(GOOD, bound[0][:2])
    t.join(10)
    assert not t.is_alive()
    (stats,) = result
    assert (stats.received, stats.malformed) == (3, 1)
    lines = out.getvalue().splitlines()
    if as_json:
        objs = [json.loads(line) for line in lines]
        assert len(objs) == 3
        assert objs[0]["agent_address"] == "192.0.2.1" and objs[2]["sequence"] == 1
        assert objs[0]["samples"][0]["records"][0]["packet"]["dst_port"] == 443
        assert "agent address type" in objs[1]["error"] and objs[1]["size"] == 11
    else:
        assert len(lines) == 3 + 1 + 3  # DATAGRAM + 2 samples, ERROR, DATAGRAM + 2 samples
        assert lines[0].startswith("DATAGRAM agent=192.0.2.1 sub_agent=0 seq=1")
        assert lines[1].startswith("FLOW tag=0:3 sequence=1 source=0:7 sampling_rate=512")
        assert "dst_ip=192.168.0.199" in lines[1] and "extended_entities(0:2210)" in lines[1]
        assert lines[2].startswith("COUNTERS tag=0:4 sequence=1 source=2:1 host_descr(0:2000)")
        assert lines[3].startswith("ERROR from ") and "malformed datagram (11 bytes)" in lines[3]


def test_decode_file_reads_bare_datagram_and_pcap(tmp_path):
    bare = tmp_path / "d.bin"
    bare.write_bytes(GOOD)
    out = io.StringIO()
    assert decode_file(str(bare), out=out).malformed == 0
    assert out.getvalue().startswith("DATAGRAM agent=192.0.2.1")
    # a classic pcap with one Ethernet/IPv4/UDP frame carrying GOOD, one carrying junk
    def frame(payload: bytes) -> bytes:
        udp = struct.pack("!HHHH", 40000, 6343, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                         socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1"))
        return b"\0" * 12 + b"\x08\x00" + ip + udp
    pcap = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for payload in (GOOD, b"junk"):
        f = frame(payload)
        pcap += struct.pack("<IIII", 0, 0, len(f), len(f)) + f
    p = tmp_path / "d.pcap"
    p.write_bytes(pcap)
    assert main(["--file", str(p), "--json"]) == 1  # one malformed datagram
    out = io.StringIO()
    stats = decode_file(str(p), json=True, out=out)
    assert (stats.received, stats.malformed) == (2, 1)
    first, second = (json.loads(x) for x in out.getvalue().splitlines())
    assert first["source"] == "127.0.0.1:40000" and first["samples"][1]["source"] == "2:1"
    assert second["size"] == 4 and "error" in second


def test_main_rejects_bad_listen_address(capsys):
    assert main(["--listen", "1.2.3.4:notaport", "--count", "1"]) == 2
    assert "hostsflow decode:" in capsys.readouterr().err
