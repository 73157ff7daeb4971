"""Our encoder's datagrams read by an independent decoder: tshark (Wireshark's sFlow dissector).

The datagrams are written into a classic pcap (Ethernet/IPv4/UDP from 127.0.0.1 to port 6343;
the pcap format is written by tests/pcap_file.py) and read with ``tshark -r FILE -T json``.  tshark 4.0 decodes
the datagram header, sample headers, sampled_header (and the frame inside it) and generic
interface counters, and nothing of the host records (it knows none of 2000-2106, 2209, 2210 and does not skip
unknown records: the rest of the sample is misread): host records therefore go after the
generic counters, and no flow sample carries records tshark does not know.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hostsflow.packet import decode_sampled_header
from hostsflow.samples import DataSource, FlowSample
from hostsflow.sflow.datagram import (
    DatagramHeader,
    encode_counter_sample,
    encode_datagram,
    encode_flow_sample,
)
from hostsflow.sflow.records import GenericInterface, HostCpu, HostDescr, SampledHeader
from hostsflow.testing import load_file_module

pcap_file = load_file_module("hostsflow_tests_pcap_file",
                             Path(__file__).resolve().parents[2] / "tests" / "pcap_file.py")
write_pcap, _checksum = pcap_file.write_pcap, pcap_file.ip_checksum

TSHARK = shutil.which("tshark")
pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed "
                                "(apt-get install tshark)")

SFLOW_PORT = 6343


def tshark_read(path: Path, dport: int = SFLOW_PORT) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [TSHARK, "-r", str(path), "-T", "json", "--no-duplicate-keys",
         "-d", f"udp.port=={dport},sflow"],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return [pkt["_source"]["layers"] for pkt in json.loads(proc.stdout)]


def child(tree: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The one subtree whose label starts with ``prefix`` (tshark keys subtrees by label)."""
    found = [v for k, v in tree.items() if k.startswith(prefix)]
    assert len(found) == 1, f"{prefix!r}: {len(found)} subtrees among {list(tree)}"
    return found[0]


# ---------------------------------------------------------------- the frames we sample

MAC_SRC, MAC_DST = bytes.fromhex("0a0000000001"), bytes.fromhex("0a0000000002")


def tcp_frame() -> bytes:
    """Ethernet/IPv4/TCP, 1514 bytes with a zero payload (we sample its first 128)."""
    payload = bytes(1514 - 14 - 20 - 20)
    tcp = struct.pack("!HHIIBBHHH", 51515, 8443, 1000, 2000, 5 << 4, 0x18, 501, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0x10, 1500, 0x1234, 0x4000, 63, 6, 0,
                     socket.inet_aton("10.9.8.7"), socket.inet_aton("10.6.5.4"))
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return MAC_DST + MAC_SRC + b"\x08\x00" + ip + tcp + payload


def udp6_frame() -> bytes:
    """Ethernet/IPv6/UDP, 200 bytes."""
    payload = bytes(200 - 14 - 40 - 8)
    udp = struct.pack("!HHHH", 5353, 53, 8 + len(payload), 0) + payload
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64,
                      socket.inet_pton(socket.AF_INET6, "2001:db8::a"),
                      socket.inet_pton(socket.AF_INET6, "2001:db8::b"))
    return MAC_DST + MAC_SRC + b"\x86\xdd" + ip6 + udp


IF_COUNTERS = GenericInterface(
    ifIndex=2, ifType=6, ifSpeed=10_000_000_000, ifDirection=1, ifStatus=3,
    ifInOctets=2**33 + 5, ifInUcastPkts=1001, ifInMulticastPkts=1002, ifInBroadcastPkts=1003,
    ifInDiscards=1004, ifInErrors=1005, ifInUnknownProtos=1006, ifOutOctets=2**34 + 7,
    ifOutUcastPkts=2001, ifOutMulticastPkts=2002, ifOutBroadcastPkts=2003, ifOutDiscards=2004,
    ifOutErrors=2005, ifPromiscuousMode=1)

#: our GenericInterface field -> tshark's field (ifStatus is split into two bits below)
IF_NAMES = {
    "ifIndex": "ifindex", "ifType": "iftype", "ifSpeed": "ifspeed",
    "ifDirection": "ifdirection", "ifInOctets": "ifinoct", "ifInUcastPkts": "ifinpkt",
    "ifInMulticastPkts": "ifinmcast", "ifInBroadcastPkts": "ifinbcast",
    "ifInDiscards": "ifindisc", "ifInErrors": "ifinerr", "ifInUnknownProtos": "ifinunk",
    "ifOutOctets": "ifoutoct", "ifOutUcastPkts": "ifoutpkt", "ifOutMulticastPkts": "ifoutmcast",
    "ifOutBroadcastPkts": "ifoutbcast", "ifOutDiscards": "ifoutdisc", "ifOutErrors": "ifouterr",
    "ifPromiscuousMode": "ifpromisc",
}


def build_datagrams() -> list[tuple[DatagramHeader, list[tuple[int, Any]]]]:
    """Two datagrams: (header, [(sample seq, FlowSample | (source, records))])."""
    frame4 = tcp_frame()
    frame6 = udp6_frame()
    flow4 = FlowSample(DataSource(0, 2), 400, [SampledHeader(1, len(frame4) + 4, 4, frame4[:128])],
                       sample_pool=4000, drops=7, input=2, output=0x3FFFFFFF)
    flow6 = FlowSample(DataSource(0, 3), 1000, [SampledHeader(1, len(frame6) + 4, 4, frame6)],
                       sample_pool=99000, drops=0, input=0, output=3)
    counters = (DataSource(0, 2), [IF_COUNTERS, HostDescr("tshark-host", bytes(range(16)), 3, 2,
                                                          "6.1.0"), HostCpu(cpu_user=5)])
    return [
        (DatagramHeader("192.0.2.77", 0, 41, 987654), [(17, flow4), (5, counters)]),
        (DatagramHeader("2001:db8::77", 3, 42, 988654), [(18, flow6), (19, flow4)]),
    ]


def encode(samples: list[tuple[int, Any]]) -> list[bytes]:
    out = []
    for seq, s in samples:
        if isinstance(s, FlowSample):
            out.append(encode_flow_sample(seq, s))
        else:
            out.append(encode_counter_sample(seq, s[0], s[1]))
    return out


@pytest.fixture(scope="module")
def tshark_layers(tmp_path_factory) -> list[dict[str, Any]]:
    path = tmp_path_factory.mktemp("tshark") / "sflow.pcap"
    write_pcap(path, [encode_datagram(h, encode(s)) for h, s in build_datagrams()])
    return tshark_read(path)


def test_datagram_headers(tshark_layers):
    assert len(tshark_layers) == 2
    for layers, (header, samples) in zip(tshark_layers, build_datagrams()):
        sf = layers["sflow"]
        v6 = ":" in header.agent_address
        assert sf["sflow_245.version"] == "5"
        assert sf["sflow_245.agenttype"] == ("2" if v6 else "1")
        assert sf["sflow_245.agent.v6" if v6 else "sflow_245.agent"] == header.agent_address
        assert sf["sflow_245.sub_agent_id"] == str(header.sub_agent_id)
        assert sf["sflow_245.sequence_number"] == str(header.sequence)
        assert sf["sflow_245.sysuptime"] == str(header.uptime_ms)
        assert sf["sflow_245.numsamples"] == str(len(samples))


def test_flow_samples(tshark_layers):
    seen = 0
    for layers, (_, samples) in zip(tshark_layers, build_datagrams()):
        sf = layers["sflow"]
        for seq, s in samples:
            if not isinstance(s, FlowSample):
                continue
            t = child(sf, f"Expanded flow sample, seq {seq}")
            hdr = s.records[0]
            assert t["sflow.enterprise"] == "0" and t["sflow_245.sampletype"] == "3"
            assert t["sflow_5.sample_length"] == str(44 + 8 + 16 + len(hdr.header)
                                                     + (-len(hdr.header) & 3))
            assert t["sflow.flow_sample.sequence_number"] == str(seq)
            assert t["sflow.flow_sample.source_id_type"] == str(s.source.ds_class)
            assert t["sflow.flow_sample.source_id_index"] == str(s.source.ds_index)
            assert t["sflow.flow_sample.sampling_rate"] == str(s.sampling_rate)
            assert t["sflow.flow_sample.sample_pool"] == str(s.sample_pool)
            assert t["sflow.flow_sample.dropped_packets"] == str(s.drops)
            assert t["sflow.flow_sample.input_interface_format"] == "0"
            assert t["sflow.flow_sample.input_interface_value"] == str(s.input)
            assert t["sflow.flow_sample.output_interface.format"] == "0"
            assert t["sflow.flow_sample.output_interface_value"] == str(s.output)
            assert t["sflow.flow_sample.flow_record"] == "1"
            r = child(t, "Raw packet header")
            assert r["sflow_245.flow_record_format"] == "1"
            assert r["sflow_245.header_protocol"] == "1"
            assert r["sflow_245.header.frame_length"] == str(hdr.frame_length)
            assert r["sflow_245.header.payload_stripped"] == "4"
            assert r["sflow_245.header.sampled_header_length"] == str(len(hdr.header))
            assert r["sflow_245.header"] == hdr.header.hex(":")
            # tshark's dissection of the sampled frame agrees with hostsflow.packet
            info = decode_sampled_header(hdr)
            tree = r["sflow_245.header_tree"]
            assert tree["eth"]["eth.src"] == info.src_mac.hex(":")
            assert tree["eth"]["eth.dst"] == info.dst_mac.hex(":")
            ip = tree["ip" if info.ip_version == 4 else "ipv6"]
            if info.ip_version == 4:
                assert (ip["ip.src"], ip["ip.dst"]) == (info.src_ip, info.dst_ip)
                assert ip["ip.len"] == str(info.ip_total_length)
                assert ip["ip.ttl"] == str(info.ttl) and ip["ip.proto"] == str(info.protocol)
                assert int(ip["ip.id"], 16) == info.ip_id
                assert int(ip["ip.dsfield"], 16) == info.tos
                l4 = tree["tcp"]
                assert (l4["tcp.srcport"], l4["tcp.dstport"]) == (str(info.src_port),
                                                                  str(info.dst_port))
                assert int(l4["tcp.flags"], 16) == info.tcp_flags
            else:
                assert (ip["ipv6.src"], ip["ipv6.dst"]) == (info.src_ip, info.dst_ip)
                assert ip["ipv6.nxt"] == str(info.protocol)
                assert ip["ipv6.hlim"] == str(info.ttl)
                l4 = tree["udp"]
                assert (l4["udp.srcport"], l4["udp.dstport"]) == (str(info.src_port),
                                                                  str(info.dst_port))
            seen += 1
    assert seen == 3


def test_counter_sample_and_interface_counters(tshark_layers):
    sf = tshark_layers[0]["sflow"]
    _, samples = build_datagrams()[0]
    seq, (source, records) = samples[1]
    t = child(sf, f"Expanded counters sample, seq {seq}")
    assert t["sflow_245.sampletype"] == "4"
    assert t["sflow_5.sample_length"] == str(16 + sum(len(r.encode()) for r in records))
    assert t["sflow.counters_sample.sequence_number"] == str(seq)
    assert t["sflow.counters_sample.source_id_type"] == str(source.ds_class)
    assert t["sflow.counters_sample.source_id_index"] == str(source.ds_index)
    assert t["sflow.counters_sample.counters_records"] == str(len(records))
    g = child(t, "Generic interface counters")
    assert g["sflow_245.counters_record_format"] == "1"
    assert g["sflow_5.flow_data_length"] == "88"
    for ours, theirs in IF_NAMES.items():
        assert g[f"sflow_245.{theirs}"] == str(getattr(IF_COUNTERS, ours)), ours
    assert g["sflow_245.ifadmin_status"] == str(IF_COUNTERS.ifStatus & 1)
    assert g["sflow_245.ifoper_status"] == str(IF_COUNTERS.ifStatus >> 1 & 1)
    # the host record after it is framed where tshark expects a record (it cannot read it)
    u = child(t, "Unknown sample format")
    u = u[0] if isinstance(u, list) else u  # several unknown records: a list, in order
    assert u["sflow_245.counters_record_format"] == "2000"
    assert u["sflow_5.flow_data_length"] == str(len(records[1].encode_body()))


def test_second_datagram_is_not_malformed(tshark_layers):
    """The IPv6-agent datagram holds only records tshark knows: no exception on it."""
    assert "_ws.malformed" not in tshark_layers[1]
    assert "_ws.malformed" not in json.dumps(tshark_layers[1])
