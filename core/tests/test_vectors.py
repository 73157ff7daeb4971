"""Our decoder and encoder against independently crafted datagrams.

Two independent sources:

1. ``core/tests/data/vectors`` (a copy of ``shared/vectors``): datagrams crafted byte by byte from the sFlow specifications, with
   sflowtool 6.11's reading of each (JSON and text).  Every field sflowtool printed is compared
   with ours through one explicit name table (:data:`SFLOWTOOL`); a sflowtool field with no entry
   in the table fails the test, so nothing it read goes unchecked.  Then the datagram is
   re-encoded with our encoder from the decoded values and must be byte-identical.
2. ``shared/tools/craft_datagram_full.py``: its constants are turned into our record objects
   (not decoded from its bytes) and our encoder must produce its datagrams byte for byte, for
   several datagram numbers and sample mixes.
"""

from __future__ import annotations

import importlib.util
import json
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from hostsflow.packet import decode_sampled_header
from hostsflow.samples import DataSource, FlowSample
from hostsflow.sflow.datagram import (
    Datagram,
    DatagramHeader,
    DecodedCounterSample,
    DecodedFlowSample,
    decode_datagram,
    encode_counter_sample,
    encode_datagram,
    encode_flow_sample,
)
from hostsflow.sflow.records import (
    MIB2_ICMP_FIELDS,
    MIB2_IP_FIELDS,
    MIB2_TCP_FIELDS,
    MIB2_UDP_FIELDS,
    Adapter,
    ExtendedEntities,
    ExtendedTcpInfo,
    HostAdapters,
    HostCpu,
    HostDescr,
    HostDiskIo,
    HostMemory,
    HostNetIo,
    HostParent,
    Mib2Icmp,
    Mib2Ip,
    Mib2Tcp,
    Mib2Udp,
    SampledHeader,
    VirtCpu,
    VirtDiskIo,
    VirtMemory,
    VirtNetIo,
    VirtNode,
)


#: the vectors, copied into the repository from shared/vectors (data, with their README)
VECTORS = Path(__file__).resolve().parent / "data" / "vectors"


def vector_path(name: str) -> Path:
    """A vector file; a missing one fails the test (the vectors ship with the repository)."""
    path = VECTORS / name
    assert path.is_file(), f"test vector {path} is missing (core/tests/data/vectors)"
    return path


def _shared_tools() -> Path | None:
    """shared/tools (the crafting tool is code, not copied): beside the repo or /work/shared."""
    for base in (Path(__file__).resolve().parents[2].parent / "shared", Path("/work/shared")):
        if (base / "tools").is_dir():
            return base / "tools"
    return None


# ================================================================ reading sflowtool's output

def parse_sflowtool_text(text: str) -> list[dict[str, Any]]:
    """sflowtool's default ``name value`` output -> the structure of its JSON output
    (datagram keys, ``samples`` each with ``elements``; adaptor_i_* folded into
    ``adaptor_list`` as in JSON)."""
    datagrams: list[dict[str, Any]] = []
    dgram: dict[str, Any] | None = None
    sample: dict[str, Any] | None = None
    element: dict[str, Any] | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        name, _, value = line.partition(" ")
        value = value.strip()
        if name == "startDatagram":
            dgram = {"samples": []}
            datagrams.append(dgram)
        elif name == "endDatagram":
            dgram = None
        elif name == "startSample":
            assert dgram is not None
            sample = {"elements": []}
            dgram["samples"].append(sample)
            element = None
        elif name == "endSample":
            sample = element = None
        elif name in ("flowBlock_tag", "counterBlock_tag"):
            assert sample is not None
            element = {name: value}
            sample["elements"].append(element)
        elif element is not None:
            if name.startswith("adaptor_"):
                _, index, rest = name.split("_", 2)
                adaptors = element.setdefault("adaptor_list", [])
                while len(adaptors) <= int(index):
                    adaptors.append({"mac_list": []})
                if rest.startswith("MAC_"):
                    adaptors[int(index)]["mac_list"].append(value)
                else:
                    adaptors[int(index)][rest] = value
            else:
                element[name] = value
        elif sample is not None:
            sample[name] = value
        else:
            assert dgram is not None, f"line outside a datagram: {line!r}"
            dgram[name] = value
    return datagrams


# ================================================================ the name table

Getter = Callable[[Any], str]


def attr(name: str) -> Getter:
    return lambda obj: str(getattr(obj, name))


def pkt(name: str, fmt: Callable[[Any], str] = str) -> Getter:
    """A field of the PacketInfo decoded from a sampled_header."""
    return lambda rec: fmt(getattr(decode_sampled_header(rec), name))


def interface(name: str) -> Getter:
    def get(sample: DecodedFlowSample) -> str:
        fmt, value = getattr(sample, name)
        return {0: f"{value}", 1: f"dropCode {value}", 2: f"multiple {value}"}[fmt]
    return get


def swap16(v: int) -> int:
    return ((v & 0xFF) << 8) | (v >> 8)


# sflowtool reads these from its own context, not from the datagram (time of reading, the
# UDP sender, pcap timestamps): nothing of ours to compare with.
NOT_IN_DATAGRAM = {"datagramSourceIP", "unixSecondsUTC", "unixSecondsUTC_uS", "localtime",
                   "pcapTimestamp", "pcapTimestamp_uS"}

#: scope ("datagram", "sample", or a record's "enterprise:format") -> sflowtool name -> getter
#: giving sflowtool's text for that field from our decoded object.
SFLOWTOOL: dict[str, dict[str, Getter]] = {
    "datagram": {
        "datagramSize": attr("size"),
        "datagramVersion": attr("version"),
        "agentSubId": attr("sub_agent_id"),
        "agent": attr("agent_address"),
        "packetSequenceNo": attr("sequence"),
        "sysUpTime": attr("uptime"),
        "samplesInPacket": lambda d: str(len(d.samples)),
    },
    "sample": {
        "sampleType_tag": lambda s: s.tag,
        "sampleType": lambda s: "FLOWSAMPLE" if isinstance(s, DecodedFlowSample)
        else "COUNTERSSAMPLE",
        "sampleSequenceNo": attr("sequence"),
        "sourceId": lambda s: f"{s.source.ds_class}:{s.source.ds_index}",
        "meanSkipCount": attr("sampling_rate"),
        "samplePool": attr("sample_pool"),
        "dropEvents": attr("drops"),
        "inputPort": interface("input"),
        "outputPort": interface("output"),
    },
    "0:1": {
        "flowSampleType": lambda r: "HEADER" if isinstance(r, SampledHeader) else "?",
        "headerProtocol": attr("protocol"),
        "sampledPacketSize": attr("frame_length"),
        "strippedBytes": attr("stripped"),
        "headerLen": lambda r: str(len(r.header)),
        "headerBytes": lambda r: r.header.hex("-").upper(),
        # sflowtool's decoding of the header bytes, against hostsflow.packet:
        "dstMAC": pkt("dst_mac", bytes.hex),
        "srcMAC": pkt("src_mac", bytes.hex),
        "ethernet_type": pkt("ethertype"),
        # IPSize = frame length less the stripped bytes and the L2 header
        "IPSize": lambda r: str(r.frame_length - r.stripped
                                - decode_sampled_header(r).l3_offset),
        "ip.tot_len": pkt("ip_total_length"),
        "srcIP": pkt("src_ip"),
        "dstIP": pkt("dst_ip"),
        "IPProtocol": pkt("protocol"),
        "IPTOS": pkt("tos"),
        "IPTTL": pkt("ttl"),
        "IPID": pkt("ip_id", lambda v: str(swap16(v))),  # sflowtool quirk: printed byte-swapped
        "TCPSrcPort": pkt("src_port"),
        "TCPDstPort": pkt("dst_port"),
        "TCPFlags": pkt("tcp_flags"),
        "UDPSrcPort": pkt("src_port"),
        "UDPDstPort": pkt("dst_port"),
    },
    "0:2210": {
        "extendedType": lambda r: "entities" if isinstance(r, ExtendedEntities) else "?",
        "entities_src_class": attr("src_class"),
        "entities_src_index": attr("src_index"),
        "entities_dst_class": attr("dst_class"),
        "entities_dst_index": attr("dst_index"),
    },
    "0:2209": {
        "tcpinfo_direction": lambda r: {0: "unknown", 1: "received", 2: "sent"}.get(
            r.dir, "<bad value>"),
        "tcpinfo_send_mss": attr("snd_mss"),
        "tcpinfo_receive_mss": attr("rcv_mss"),
        "tcpinfo_unacked_pkts": attr("unacked"),
        "tcpinfo_lost_pkts": attr("lost"),
        "tcpinfo_retrans_pkts": attr("retrans"),
        "tcpinfo_path_mtu": attr("pmtu"),
        "tcpinfo_rtt_uS": attr("rtt"),
        "tcpinfo_rtt_uS_var": attr("rttvar"),
        "tcpinfo_send_congestion_win": attr("snd_cwnd"),
        "tcpinfo_reordering": attr("reordering"),
        "tcpinfo_rtt_uS_min": attr("min_rtt"),
    },
    "0:2000": {
        "hostname": attr("hostname"),
        "UUID": lambda r: str(uuid.UUID(bytes=r.uuid)),
        "machine_type": attr("machine_type"),
        "os_name": attr("os_name"),
        "os_release": attr("os_release"),
    },
    "0:2001": {
        "adaptor_list": lambda r: [
            {"ifIndex": str(a.ifIndex), "MACs": str(len(a.macs)),
             "mac_list": [m.hex() for m in a.macs]} for a in r.adapters],
    },
    "0:2002": {
        "parent_dsClass": attr("container_type"),
        "parent_dsIndex": attr("container_index"),
    },
    "0:2003": {
        "cpu_load_one": lambda r: f"{r.load_one:.3f}",
        "cpu_load_five": lambda r: f"{r.load_five:.3f}",
        "cpu_load_fifteen": lambda r: f"{r.load_fifteen:.3f}",
        "cpu_proc_run": attr("proc_run"),
        "cpu_proc_total": attr("proc_total"),
        "cpu_num": attr("cpu_num"),
        "cpu_speed": attr("cpu_speed"),
        "cpu_uptime": attr("uptime"),
        "cpu_user": attr("cpu_user"),
        "cpu_nice": attr("cpu_nice"),
        "cpu_system": attr("cpu_system"),
        "cpu_idle": attr("cpu_idle"),
        "cpu_wio": attr("cpu_wio"),
        "cpuintr": attr("cpu_intr"),
        "cpu_sintr": attr("cpu_sintr"),
        "cpuinterrupts": attr("interrupts"),
        "cpu_contexts": attr("contexts"),
        "cpu_steal": attr("cpu_steal"),
        "cpu_guest": attr("cpu_guest"),
        "cpu_guest_nice": attr("cpu_guest_nice"),
    },
    "0:2004": {name: attr(name) for name in (
        "mem_total mem_free mem_shared mem_buffers mem_cached swap_total swap_free "
        "page_in page_out swap_in swap_out").split()},
    "0:2005": {
        "disk_total": attr("disk_total"),
        "disk_free": attr("disk_free"),
        # hundredths of a percent, printed as a percent; -1 is "unknown"
        "disk_partition_max_used": lambda r: "unknown" if r.part_max_used == -1
        else f"{r.part_max_used / 100:.2f}",
        "disk_reads": attr("reads"),
        "disk_bytes_read": attr("bytes_read"),
        "disk_read_time": attr("read_time"),
        "disk_writes": attr("writes"),
        "disk_bytes_written": attr("bytes_written"),
        "disk_write_time": attr("write_time"),
    },
    "0:2006": {f"nio_{n}": attr(n) for n in (
        "bytes_in pkts_in errs_in drops_in bytes_out pkts_out errs_out drops_out").split()},
    # MIB-II groups: sflowtool's names are the group prefix + our field names
    "0:2007": {f"ip{n}": attr(n) for n in MIB2_IP_FIELDS},
    "0:2008": {f"icmp{n}": attr(n) for n in MIB2_ICMP_FIELDS},
    "0:2009": {f"tcp{n}": attr(n) for n in MIB2_TCP_FIELDS},
    "0:2010": {f"udp{n}": attr(n) for n in MIB2_UDP_FIELDS},
    "0:2100": {f"vnode_{n}": attr(n) for n in "mhz cpus memory memory_free num_domains".split()},
    "0:2101": {
        "vcpu_state": attr("state"),
        "vcpu_cpu_mS": attr("cpuTime"),
        "vcpu_cpuCount": attr("nrVirtCpu"),
    },
    "0:2102": {"vmem_memory": attr("memory"), "vmem_maxMemory": attr("maxMemory")},
    "0:2103": {f"vdsk_{n}": attr(n) for n in (
        "capacity allocation available rd_req rd_bytes wr_req wr_bytes errs").split()},
    "0:2104": {f"vnio_{n}": attr(n) for n in (
        "bytes_in pkts_in errs_in drops_in bytes_out pkts_out errs_out drops_out").split()},
}


def compare_with_sflowtool(ours: Datagram, theirs: dict[str, Any]) -> int:
    """Assert every field of sflowtool's reading equals ours; return how many were compared."""
    checked = 0

    def check(scope: str, obj: Any, name: str, expected: Any, where: str) -> None:
        nonlocal checked
        table = SFLOWTOOL.get(scope)
        assert table is not None, f"{where}: no name table for {scope}"
        assert name in table, f"{where}: sflowtool field {name!r} has no entry in SFLOWTOOL"
        got = table[name](obj)
        assert got == expected, f"{where}: {name}: sflowtool says {expected!r}, we read {got!r}"
        checked += 1

    for name, value in theirs.items():
        if name == "samples" or name in NOT_IN_DATAGRAM:
            continue
        check("datagram", ours, name, value, "datagram")
    assert len(theirs["samples"]) == len(ours.samples)
    for i, (s_theirs, s_ours) in enumerate(zip(theirs["samples"], ours.samples)):
        for name, value in s_theirs.items():
            if name != "elements":
                check("sample", s_ours, name, value, f"sample {i}")
        assert len(s_theirs["elements"]) == len(s_ours.records), f"sample {i}: record count"
        for j, (e_theirs, r_ours) in enumerate(zip(s_theirs["elements"], s_ours.records)):
            tag = e_theirs.get("flowBlock_tag") or e_theirs["counterBlock_tag"]
            assert tag == f"{r_ours.enterprise}:{r_ours.format}", f"sample {i} record {j}: tag"
            checked += 1
            for name, value in e_theirs.items():
                if name not in ("flowBlock_tag", "counterBlock_tag"):
                    check(tag, r_ours, name, value, f"sample {i} record {j} ({tag})")
    return checked


def _reading(name: str) -> dict[str, Any]:
    path = vector_path(name)
    if name.endswith(".json"):
        return json.loads(path.read_text())
    (only,) = parse_sflowtool_text(path.read_text())
    return only


@pytest.mark.parametrize("vector,reading", [
    ("full.bin", "full.sflowtool.json"),
    ("full.bin", "full.sflowtool.txt"),
    ("counters.bin", "counters.sflowtool.txt"),
])
def test_every_field_matches_sflowtool(vector, reading):
    data = vector_path(vector).read_bytes()
    ours = decode_datagram(data)
    checked = compare_with_sflowtool(ours, _reading(reading))
    # make sure the comparison really walked every line of sflowtool's text reading (its
    # adaptor_* lines are compared as one adaptor_list per host_adapters record)
    lines = vector_path(reading.replace(".json", ".txt")).read_text().splitlines()
    names = [line.split(" ")[0] for line in lines if line.strip()]
    skip = NOT_IN_DATAGRAM | {"startDatagram", "endDatagram", "startSample", "endSample"}
    n_lines = sum(1 for n in names if n not in skip and not n.startswith("adaptor_"))
    n_lines += sum(1 for line in lines if line == "counterBlock_tag 0:2001")
    assert n_lines > 100
    assert checked == n_lines


def test_text_and_json_readings_agree():
    """Our text parser for sflowtool's output gives the same structure as its JSON."""
    assert _reading("full.sflowtool.txt") == {
        k: v for k, v in _reading("full.sflowtool.json").items()}


def test_name_table_catches_a_wrong_value():
    """The comparison fails on a single changed field (it is not vacuous)."""
    ours = decode_datagram(vector_path("full.bin").read_bytes())
    theirs = _reading("full.sflowtool.json")
    theirs["samples"][1]["elements"][2]["cpu_nice"] = "21"
    with pytest.raises(AssertionError, match="cpu_nice"):
        compare_with_sflowtool(ours, theirs)
    theirs = _reading("full.sflowtool.json")
    theirs["samples"][0]["elements"][0]["newField"] = "1"
    with pytest.raises(AssertionError, match="newField"):
        compare_with_sflowtool(ours, theirs)


# ================================================================ re-encoding


def reencode(d: Datagram) -> bytes:
    """Encode a decoded datagram again with our encoder, from its decoded values."""
    samples = []
    for s in d.samples:
        if isinstance(s, DecodedFlowSample):
            fs = FlowSample(source=s.source, sampling_rate=s.sampling_rate,
                            records=list(s.records), sample_pool=s.sample_pool, drops=s.drops,
                            input=s.input[0] << 30 | s.input[1],
                            output=s.output[0] << 30 | s.output[1])
            samples.append(encode_flow_sample(s.sequence, fs))
        else:
            assert isinstance(s, DecodedCounterSample)
            samples.append(encode_counter_sample(s.sequence, s.source, s.records))
    header = DatagramHeader(d.agent_address, d.sub_agent_id, d.sequence, d.uptime)
    return encode_datagram(header, samples)


@pytest.mark.parametrize("vector", ["full.bin", "counters.bin"])
def test_reencoding_is_byte_identical(vector):
    data = vector_path(vector).read_bytes()
    again = reencode(decode_datagram(data))
    # the vectors are canonical XDR (records in sample order, zero padding), so nothing may
    # legitimately differ: the bytes must be the same.
    assert again.hex() == data.hex()


# ================================================================ craft_datagram_full.py


@pytest.fixture(scope="module")
def craft():
    tools = _shared_tools()
    path = tools / "craft_datagram_full.py" if tools is not None else None
    if path is None or not path.exists():
        pytest.skip("shared/tools/craft_datagram_full.py not found beside the repo nor at "
                    "/work/shared")
    spec = importlib.util.spec_from_file_location("craft_datagram_full", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def our_datagram(c, i=0, flow=True, virtual=True, vnode=True) -> tuple[bytes, list]:
    """Datagram i built by our encoder from craft_datagram_full's constants (not its bytes);
    also returns the samples as (kind, source, records) for checking the decoder."""
    samples: list[bytes] = []
    expected: list[tuple] = []
    if flow:
        frame = c.build_frame()
        t = dict(c.TCPINFO)
        t["dir"] = t.pop("dirn")
        records = [SampledHeader(c.HEADER_PROTOCOL, len(frame) + c.STRIPPED, c.STRIPPED,
                                 frame[:c.HEADER_LEN]),
                   ExtendedEntities(*c.ENTITIES), ExtendedTcpInfo(**t)]
        fs = FlowSample(DataSource(c.FLOW_DS_CLASS, c.FLOW_DS_INDEX), c.SAMPLING_RATE,
                        list(records), sample_pool=c.SAMPLE_POOL, drops=c.DROPS,
                        input=c.INPUT_IF[1], output=c.OUTPUT_IF[1])
        samples.append(encode_flow_sample(c.FLOW_SEQ + i, fs))
        expected.append(("flow", fs.source, records))
    cpu = dict(c.HOST_CPU_GAUGES, **c.at(c.HOST_CPU, c.HOST_CPU_INC, i))
    cpu["uptime"] = c.HOST_CPU_UPTIME + (c.UPTIME_STEP_MS * i) // 1000
    mib2 = {fmt: {name[len(prefix):]: v for name, v in c.mib2_values(fmt, i).items()}
            for fmt, prefix in ((2007, "ip"), (2008, "icmp"), (2009, "tcp"), (2010, "udp"))}
    physical = [
        HostDescr(c.HOSTNAME, c.UUID, c.MACHINE_TYPE, c.OS_NAME, c.OS_RELEASE),
        HostAdapters([Adapter(ifindex, list(macs)) for ifindex, macs in c.ADAPTERS]),
        HostCpu(**cpu),
        HostMemory(**c.HOST_MEM_GAUGES, **c.at(c.HOST_MEM, c.HOST_MEM_INC, i)),
        HostDiskIo(**c.HOST_DSK_GAUGES, **c.at(c.HOST_DSK, c.HOST_DSK_INC, i)),
        HostNetIo(**c.at(c.HOST_NIO, c.HOST_NIO_INC, i)),
        Mib2Ip(**mib2[2007]), Mib2Icmp(**mib2[2008]), Mib2Tcp(**mib2[2009]),
        Mib2Udp(**mib2[2010]),
    ]
    if vnode:
        physical.append(VirtNode(**c.VNODE))
    src = DataSource(c.CNT_DS_CLASS, c.CNT_DS_INDEX)
    samples.append(encode_counter_sample(c.CNT_SEQ + i, src, physical))
    expected.append(("counters", src, physical))
    if virtual:
        virt = [
            HostDescr(c.VHOSTNAME, c.VUUID, c.VMACHINE_TYPE, c.VOS_NAME, c.VOS_RELEASE),
            HostParent(*c.VPARENT),
            VirtCpu(**c.at(c.VIRT_CPU, c.VIRT_CPU_INC, i)),
            VirtMemory(**c.VIRT_MEM),
            VirtDiskIo(**c.VIRT_DSK_GAUGES, **c.at(c.VIRT_DSK, c.VIRT_DSK_INC, i)),
            VirtNetIo(**c.at(c.VIRT_NIO, c.VIRT_NIO_INC, i)),
        ]
        vsrc = DataSource(c.VCNT_DS_CLASS, c.VCNT_DS_INDEX)
        samples.append(encode_counter_sample(c.VCNT_SEQ + i, vsrc, virt))
        expected.append(("counters", vsrc, virt))
    header = DatagramHeader(c.AGENT_IP, c.SUB_AGENT_ID, 1 + i, c.UPTIME_MS + c.UPTIME_STEP_MS * i)
    return encode_datagram(header, samples), expected


@pytest.mark.parametrize("i", [0, 1, 2, 7])
@pytest.mark.parametrize("flow,virtual,vnode", [
    (True, True, True), (False, True, True), (True, False, False), (False, False, True)])
def test_our_encoder_matches_craft_datagram_full(craft, i, flow, virtual, vnode):
    theirs = craft.build_datagram(i, flow=flow, virtual=virtual, vnode=vnode)
    ours, expected = our_datagram(craft, i, flow, virtual, vnode)
    assert ours.hex() == theirs.hex()
    d = decode_datagram(theirs)
    assert (d.agent_address, d.sequence, d.uptime) == (
        craft.AGENT_IP, 1 + i, craft.UPTIME_MS + craft.UPTIME_STEP_MS * i)
    assert [(("flow" if isinstance(s, DecodedFlowSample) else "counters"), s.source, s.records)
            for s in d.samples] == expected


def test_craft_datagram_zero_is_the_vector(craft):
    """The tool and the stored vectors agree (so both sources describe the same bytes)."""
    assert craft.build_datagram(0) == vector_path("full.bin").read_bytes()
    assert craft.build_datagram(0, flow=False) == vector_path("counters.bin").read_bytes()
