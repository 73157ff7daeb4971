"""The agent schema, module blocks through the registry, sample rendering and file loading."""

from __future__ import annotations

import ipaddress
import os
import uuid
from typing import Any

import attrs
import pytest
from hostsflow.config import (
    AgentCIDR,
    AgentConfig,
    CollectorConfig,
    ConfigError,
    ConfigRegistry,
    SpeedRange,
    load_config,
    module_blocks,
    on_off,
    option,
    parse_config_text,
    real,
    regex,
    render_block,
    render_config,
    sampling_name,
    speed_name,
    speed_range,
    sub_block,
    u32,
)
from hostsflow.config.options import device
from hostsflow.config.schema import MAX_CONFIG_BYTES


# A module's config classes, declared the way a module does it.
@attrs.frozen
class PortConfig:
    dev: str = option(help="switch port", converter=device, example="swp1")


def _probability_ok(inst: Any, attribute: Any, value: float) -> None:
    if value == 0.5:
        raise ValueError("0.5 is reserved for tests")


@attrs.frozen
class CaptureConfig:
    dev: str | None = option(None, help="device to tap", converter=device)
    speed: SpeedRange | None = option(None, help="link speeds to tap", converter=speed_range)
    promisc: bool = option(False, help="promiscuous mode", converter=on_off)
    sampling: int | None = option(None, help="per-tap 1-in-N", converter=u32(0, 10_000_000))
    pattern: Any = option(None, key="dev.pattern", help="device regex", converter=regex)
    probability: float = option(1.0, help="sampling probability", converter=real(0.0, 1.0),
                                validator=_probability_ok)
    ports: list[PortConfig] = sub_block(PortConfig, key="port", repeat=True, help="ports")

    def __attrs_post_init__(self) -> None:
        if self.dev is not None and self.pattern is not None:
            raise ValueError("give dev or dev.pattern, not both")


@attrs.frozen
class TcpConfig:
    tunnel: bool = option(False, help="look inside tunnels", converter=on_off)
    udp: bool = option(False, help="UDP too", converter=on_off)


def registry() -> ConfigRegistry:
    reg = ConfigRegistry({"capture": "hostsflow-capture", "tcp": "hostsflow-tcp",
                          "nflog": "hostsflow-nflog"})
    reg.block("capture", CaptureConfig, repeatable=True, help="packet capture")
    reg.block("tcp", TcpConfig, help="TCP metrics")
    return reg


def load(text: str, **kw: Any) -> AgentConfig:
    return parse_config_text(text, "a.conf", registry(), **kw)


def error(text: str, **kw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(text, **kw)
    return str(info.value)


MINIMAL = "sflow { collector { ip = 127.0.0.1 } }"


def test_defaults_of_a_minimal_config() -> None:
    c = load(MINIMAL)
    assert c == AgentConfig(collectors=[CollectorConfig("127.0.0.1")])
    assert c.collectors == [CollectorConfig(ip="127.0.0.1", udpport=6343, dev=None,
                                            namespace=None)]
    assert (c.sampling, c.polling, c.header_bytes, c.datagram_bytes, c.sub_agent_id) == (
        400, 30, 128, 1400, 100000)
    assert (c.refresh_adaptors, c.check_adaptors, c.refresh_vms, c.drop_priv) == (
        180, 10, 60, True)
    assert (c.agent_ip, c.agent, c.agent_cidr, c.uuid) == (None, None, [], None)
    assert (c.sampling_by, c.polling_by, c.modules, c.notes, c.source) == ({}, {}, {}, [],
                                                                          "a.conf")


def test_every_top_level_key() -> None:
    c = load("""sflow {
      collector { ip = 10.0.0.1 udpport = 7000 dev = vrf-red namespace = blue }
      collector { ip = collector.example.com }
      sampling = 1K
      sampling.10G = 10000
      sampling.1g = 2000
      sampling.bps_ratio = 0
      sampling.HTTP = 50
      sampling.app.myApp = 7
      polling = 20
      polling.http = 10
      headerBytes = 256
      datagramBytes = 8192
      agentIP = 192.0.2.1
      agent = eth0
      agent.cidr = 10.0.0.0/8
      agent.cidr = !10.1.0.0/16
      agent.cidr = 2001:db8::/32
      subAgentId = 199999
      uuid = 12345678-1234-1234-1234-123456789abc
      refreshAdaptors = 3600
      checkAdaptors = 1
      refreshVMs = 600
      forgetVMs = 60
      dropPriv = off
    }""")
    assert c.collectors == [CollectorConfig("10.0.0.1", 7000, "vrf-red", "blue"),
                            CollectorConfig("collector.example.com")]
    assert c.sampling == 1000
    assert c.sampling_by == {"10G": 10000, "1G": 2000, "bps_ratio": 0, "http": 50,
                             "app.myapp": 7}
    assert (c.polling, c.polling_by) == (20, {"http": 10})
    assert (c.header_bytes, c.datagram_bytes, c.agent_ip, c.agent) == (
        256, 8192, "192.0.2.1", "eth0")
    assert c.agent_cidr == [AgentCIDR(ipaddress.ip_network("10.0.0.0/8")),
                            AgentCIDR(ipaddress.ip_network("10.1.0.0/16"), True),
                            AgentCIDR(ipaddress.ip_network("2001:db8::/32"))]
    assert c.sub_agent_id == 199999
    assert c.uuid == uuid.UUID("12345678-1234-1234-1234-123456789abc")
    assert (c.refresh_adaptors, c.check_adaptors, c.refresh_vms, c.forget_vms, c.drop_priv) == (
        3600, 1, 600, 60, False)
    assert c.notes == []


def test_aliases_and_case_insensitive_keys() -> None:
    c = load("SFLOW { COLLECTOR { IP = ::1 UDPPort = 1 } packetSamplingRate = 5\n"
             " COUNTERPOLLINGINTERVAL = 7 agentip = 10.0.0.9 HEADERBYTES = 64 }")
    assert c.collectors == [CollectorConfig("::1", 1)]
    assert (c.sampling, c.polling, c.agent_ip, c.header_bytes) == (5, 7, "10.0.0.9", 64)
    assert [(n.line, n.level, n.message) for n in c.notes] == [
        (1, "debug", "'packetSamplingRate' is an old spelling of 'sampling'"),
        (2, "debug", "'COUNTERPOLLINGINTERVAL' is an old spelling of 'polling'"),
    ]


def test_repeated_scalar_last_wins_with_a_warning() -> None:
    c = load("sflow {\n collector { ip = 1.2.3.4 }\n sampling = 100\n sampling = 200\n}")
    assert c.sampling == 200
    assert [str(n) for n in c.notes] == [
        "a.conf:4: 'sampling' set again (first on line 3); this one counts"]
    assert c.notes[0].level == "warning"


def test_legacy_keys_are_checked_and_ignored_with_notes() -> None:
    c = load("sflow {\n collector { ip = 1.2.3.4 }\n loopback = on\n samplingDirection = both\n"
             " modules = /etc/hsflowd/modules\n"
             " nflogGroup = 5\n nflogProbability = 0.0025\n ulogGroup = 1\n"
             " ulogProbability = 1\n jsonPort = 36343\n jsonFIFO = /tmp/x\n"
             " xen.update.dominfo = on\n xen.dsk = off\n}")
    assert c == load("sflow { collector { ip = 1.2.3.4 } }")
    assert [n.line for n in c.notes] == list(range(3, 14))
    levels = {n.message.split("'")[1]: n.level for n in c.notes}
    assert levels["loopback"] == "debug" and levels["nflogGroup"] == "warning"
    assert levels["ulogProbability"] == "warning" and levels["jsonPort"] == "warning"
    assert "use nflog { group = N }" in c.notes[3].message


def test_require_collector_can_be_waived() -> None:
    assert load("sflow { }", require_collector=False).collectors == []
    assert error("sflow {\n}") == ("a.conf:1: no collector { ip = ... } in the sflow block "
                                   "(at least one is required)")


SCHEMA_ERRORS = [
    ("", "a.conf:1: no 'sflow { ... }' block (the file must hold one)"),
    ("# only a comment\n", "a.conf:1: no 'sflow { ... }' block (the file must hold one)"),
    (f"{MINIMAL}\nsflow {{ }}",
     "a.conf:2: second 'sflow' block (the first is on line 1); only one is allowed"),
    (f"sampling = 1\n{MINIMAL}", "a.conf:1: setting 'sampling' outside the sflow { } block "
     "(everything goes inside one sflow { } block)"),
    (f"{MINIMAL}\ncollector {{ ip = 1.2.3.4 }}", "a.conf:2: block 'collector' outside the "
     "sflow { } block (everything goes inside one sflow { } block)"),
    ("sflow {\n collector {\n  udpport = 6343\n }\n}",
     "a.conf:2: 'collector' block has no 'ip' (required)"),
    ("sflow {\n collector { ip = 10.0.0.256 }\n}",
     "a.conf:2: bad value for 'ip': '10.0.0.256' is neither an IP address nor a hostname"),
    ("sflow {\n collector { ip = 1.2.3.4\n  UDPPort = 70000 }\n}",
     "a.conf:3: bad value for 'UDPPort': 70000 is out of range 1..65535"),
    ("sflow {\n collector { ip = 1.2.3.4 port = 6343 }\n}",
     "a.conf:2: unknown key 'port' in 'collector' block; did you mean 'udpport'? (valid keys: "
     "dev, ip, namespace, udpport)"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n sampling = 10000001\n}",
     "a.conf:3: bad value for 'sampling': 10000001 is out of range 0..10000000"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n sampling.10G = 20M\n}",
     "a.conf:3: bad value for 'sampling.10G': 20M is out of range 0..10000000"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n polling.http = 301\n}",
     "a.conf:3: bad value for 'polling.http': 301 is out of range 0..300"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n sampling. = 1\n}",
     "a.conf:3: missing name after 'sampling.'"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n headerBytes = 257\n}",
     "a.conf:3: bad value for 'headerBytes': 257 is out of range 0..256"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n datagramBytes = 199\n}",
     "a.conf:3: bad value for 'datagramBytes': 199 is out of range 200..8192"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n subAgentId = 200000\n}",
     "a.conf:3: bad value for 'subAgentId': 200000 is out of range 0..199999"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n agent.cidr = 10.0.0.0/8\n agent.cidr = nope\n}",
     "a.conf:4: bad value for 'agent.cidr': expected a CIDR like 10.0.0.0/8 or !fe80::/10, "
     "got 'nope'"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n dropPriv = true\n}",
     "a.conf:3: bad value for 'dropPriv': expected 'on' or 'off', got 'true'"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n loopback = 1\n}",
     "a.conf:3: bad value for 'loopback': expected 'on' or 'off', got '1'"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n samplng = 1\n}",
     "a.conf:3: unknown key 'samplng' in 'sflow' block; did you mean 'sampling'? (valid keys: "
     "agent, agent.cidr, agentIP, checkAdaptors, collector { }, datagramBytes, dns-sd { }, DNSSD, "
     "DNSSD_domain, dropPriv, "
     "forgetVMs, headerBytes, polling, polling.<name>, refreshAdaptors, refreshVMs, sampling, "
     "sampling.<name>, subAgentId, uuid)"),
    ("sflow {\n collector = 1.2.3.4\n}", "a.conf:2: 'collector' is a block: write "
     "collector { ... }"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n sampling { }\n}",
     "a.conf:3: 'sampling' is a setting, not a block: write sampling = VALUE"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n loopback { }\n}",
     "a.conf:3: 'loopback' is a setting, not a block: write loopback = VALUE"),
    ("sflow {\n collector { ip = 1.2.3.4 x { } }\n}",
     "a.conf:2: unknown block 'x' in 'collector' block (valid keys: dev, ip, namespace, "
     "udpport)"),
    # the first mistake in file order is reported, whether a key or a block
    ("sflow {\n foo { }\n collector { ip = 1.2.3.4 }\n bar = 1\n}",
     "a.conf:2: unknown module 'foo' (installed: capture, nflog, tcp)"),
    # a typo: the installed module it resembles, else the in-repo one (never a made-up name)
    ("sflow {\n collector { ip = 1.2.3.4 }\n tpc { }\n}",
     "a.conf:3: unknown module 'tpc'; did you mean 'tcp'? (installed: capture, nflog, tcp)"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n pcp { }\n}",
     "a.conf:3: unknown module 'pcp'; did you mean 'pcap'? It is not installed: it comes with "
     "hostsflow as hostsflow-pcap (plugins/pcap; installed: capture, nflog, tcp)"),
    ("sflow {\n bar = 1\n foo { }\n}", "a.conf:2: unknown key 'bar' in 'sflow' block "
     "(valid keys: agent, agent.cidr, agentIP, checkAdaptors, collector { }, datagramBytes, "
     "dns-sd { }, DNSSD, DNSSD_domain, dropPriv, forgetVMs, headerBytes, polling, "
     "polling.<name>, refreshAdaptors, refreshVMs, sampling, sampling.<name>, subAgentId, uuid)"),
]


@pytest.mark.parametrize("text, message", SCHEMA_ERRORS)
def test_schema_errors(text: str, message: str) -> None:
    assert error(text) == message


# ---------------------------------------------------------------- module blocks


def test_module_blocks_validated_against_declared_classes() -> None:
    c = load("""sflow {
      collector { ip = 1.2.3.4 }
      capture { dev = eth0 promisc = on sampling = 1K }
      CAPTURE { speed = 1G- dev.pattern = "veth.*" port { dev = swp1 } port { dev = swp2 } }
      tcp { }
    }""")
    first, second = c.modules["capture"]
    assert first == CaptureConfig(dev="eth0", promisc=True, sampling=1000)
    assert second.speed == SpeedRange(10**9, None) and second.pattern.pattern == "veth.*"
    assert second.ports == [PortConfig("swp1"), PortConfig("swp2")]
    assert c.modules["tcp"] == TcpConfig()  # not repeatable: the instance itself
    assert list(c.modules) == ["capture", "tcp"]


MODULE_ERRORS = [
    ("sflow {\n collector { ip = 1.2.3.4 }\n tcp {\n  tunnel = on\n  dump = on\n }\n}",
     "a.conf:5: unknown key 'dump' in 'tcp' block (valid keys: tunnel, udp)"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n tcp { }\n tcp { udp = on }\n}",
     "a.conf:4: 'tcp' block may appear only once (first on line 3)"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n nflog { group = 5 }\n}",
     "a.conf:3: module 'nflog' is installed (hostsflow-nflog) but not loaded"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n tcp = on\n}",
     "a.conf:3: 'tcp' is a module block: write tcp { ... }"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n nflog = 5\n}",
     "a.conf:3: 'nflog' is a module block: write nflog { ... }"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n capture { promisc = maybe }\n}",
     "a.conf:3: bad value for 'promisc': expected 'on' or 'off', got 'maybe'"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n capture {\n  speed = 10G-1G\n }\n}",
     "a.conf:4: bad value for 'speed': speed range '10G-1G' ends below its start"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n capture {\n  probability = 0.5\n }\n}",
     "a.conf:4: bad value for 'probability': 0.5 is reserved for tests"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n capture {\n  dev = a\n  dev.pattern = b\n }\n}",
     "a.conf:3: 'capture' block: give dev or dev.pattern, not both"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n capture {\n  port { }\n }\n}",
     "a.conf:4: 'port' block has no 'dev' (required)"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n capture {\n  port = swp1\n }\n}",
     "a.conf:4: 'port' is a block: write port { ... }"),
    ("sflow {\n collector { ip = 1.2.3.4 }\n tcp {\n  x { }\n }\n}",
     "a.conf:4: unknown block 'x' in 'tcp' block (valid keys: tunnel, udp)"),
]


@pytest.mark.parametrize("text, message", MODULE_ERRORS)
def test_module_errors(text: str, message: str) -> None:
    assert error(text) == message


def test_not_loaded_reason_and_empty_install_list() -> None:
    reg = ConfigRegistry({"nflog": "hostsflow-nflog"})
    reg.not_loaded("nflog", "ImportError: no module named pyroute2")
    with pytest.raises(ConfigError) as info:
        parse_config_text("sflow { collector { ip = ::1 } nflog { } }", "b.conf", reg)
    assert str(info.value) == ("b.conf:1: module 'nflog' is installed (hostsflow-nflog) but not "
                               "loaded: ImportError: no module named pyroute2")
    with pytest.raises(ConfigError) as info:
        parse_config_text("sflow { collector { ip = ::1 } Foo { } }", "b.conf")
    assert str(info.value) == "b.conf:1: unknown module 'Foo' (installed: none)"


def test_registry_status_and_module_mistakes() -> None:
    reg = registry()
    assert [reg.status(n) for n in ("TCP", "nflog", "foo")] == ["declared", "installed",
                                                                  "unknown"]
    reg.block("tcp", TcpConfig, help="TCP metrics")  # same declaration twice is harmless
    with pytest.raises(ValueError, match="declared twice"):
        reg.block("tcp", CaptureConfig)
    for name in ("sflow", "Collector", ""):
        with pytest.raises(ValueError, match="reserved"):
            reg.block(name, TcpConfig)
    with pytest.raises(ValueError, match="not an attrs class"):
        reg.block("plain", dict)


def test_module_blocks_lists_names_for_the_loader() -> None:
    text = "sflow {\n collector { ip = ::1 }\n PCAP { }\n tcp { }\n pcap { }\n}"
    assert module_blocks(text, "m.conf") == {"pcap": 3, "tcp": 4}
    with pytest.raises(ConfigError, match="m.conf:1: 'sflow' block is never closed"):
        module_blocks("sflow {", "m.conf")


# ---------------------------------------------------------------- rendering


def test_rendered_sample_is_a_valid_config_with_the_defaults() -> None:
    reg = registry()
    text = render_config(reg)
    assert "  # sampling = 400" in text and "    ip = 127.0.0.1" in text
    assert "# promiscuous mode [on/off]" in text and "# promisc = off" in text
    assert "# packet capture (repeatable)" in text
    c = parse_config_text(text, "sample.conf", reg)
    assert c == AgentConfig(collectors=[CollectorConfig("127.0.0.1")],
                            modules={"capture": [CaptureConfig(ports=[PortConfig("swp1")])],
                                     "tcp": TcpConfig()})
    opened = [line for line in render_config(reg, ["tcp"]).splitlines()
              if line.rstrip().endswith("{") and not line.lstrip().startswith("#")]
    assert len(opened) == 3, opened  # sflow, collector, tcp (dns-sd { } shown commented out)
    with pytest.raises(ValueError, match="no declared block named nope"):
        render_config(reg, ["nope"])


def test_render_block_exact() -> None:
    assert render_block("tcp", TcpConfig, "TCP metrics") == (
        "# TCP metrics\n"
        "tcp {\n"
        "  # look inside tunnels [on/off]\n"
        "  # tunnel = off\n"
        "  # UDP too [on/off]\n"
        "  # udp = off\n"
        "}")


# ---------------------------------------------------------------- sampling names


def test_sampling_and_speed_names() -> None:
    assert [sampling_name(n) for n in ("10g", "100M", "1k", "BPS_Ratio", "App.X")] == [
        "10G", "100M", "1K", "bps_ratio", "app.x"]
    assert [speed_name(s) for s in (10**7, 10**8, 10**9, 10**10, 4 * 10**10, 10**11, 10**12,
                                    10**13, 1500, 999, 0)] == [
        "10M", "100M", "1G", "10G", "40G", "100G", "1T", "10T", "1K", "999", "0"]
    # a config key written by a person matches the name the lookup builds from a speed
    c = load("sflow { collector { ip = ::1 } sampling.1g = 5 sampling.40G = 6 }")
    assert c.sampling_by[speed_name(10**9)] == 5 and c.sampling_by[speed_name(4 * 10**10)] == 6


# ---------------------------------------------------------------- files


def test_load_config_from_files(tmp_path: Any) -> None:
    good = tmp_path / "good.conf"
    good.write_text(MINIMAL + "\n")
    assert load_config(str(good), registry()).collectors == [CollectorConfig("127.0.0.1")]
    assert load_config(str(good)).source == str(good)

    missing = tmp_path / "missing.conf"
    with pytest.raises(ConfigError) as info:
        load_config(str(missing))
    assert str(info.value) == f"{missing}: cannot read config file: No such file or directory"

    binary = tmp_path / "bin.conf"
    binary.write_bytes(b"sflow {\n collector { ip = ::1 }\n agent = caf\xe9\n}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(binary))
    assert str(info.value) == f"{binary}:3: 'caf\ufffd' holds bytes that are not UTF-8 (only " \
        "comments may)"
    latin1 = tmp_path / "latin1.conf"
    latin1.write_bytes(b"# caf\xe9 au lait\n" + MINIMAL.encode())
    assert load_config(str(latin1)).collectors == [CollectorConfig("127.0.0.1")]

    with pytest.raises(ConfigError, match=r"not a regular file \(a directory\)"):
        load_config(str(tmp_path))


def test_config_files_must_be_regular_files_of_sane_size(tmp_path):
    """A FIFO is refused at once (no writer is waited for), /dev/zero is not read to the end
    of memory, and a file over the limit is refused before it is read."""
    fifo = tmp_path / "fifo.conf"
    os.mkfifo(fifo)
    for path, message in ((str(fifo), "not a regular file (a FIFO)"),
                          ("/dev/zero", "not a regular file (a character device)")):
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert str(info.value) == f"{path}: {message}: a config file must be one"
    huge = tmp_path / "huge.conf"
    with open(huge, "wb") as f:
        f.write(MINIMAL.encode())
        f.truncate(MAX_CONFIG_BYTES + 1)
    with pytest.raises(ConfigError, match=f"{MAX_CONFIG_BYTES + 1} bytes is too big"):
        load_config(str(huge))
    at_limit = tmp_path / "limit.conf"
    at_limit.write_bytes(MINIMAL.encode() + b"#" * (MAX_CONFIG_BYTES - len(MINIMAL) - 1) + b"\n")
    assert load_config(str(at_limit)).collectors == [CollectorConfig("127.0.0.1")]


def test_installed_modules_render_valid_samples() -> None:
    """Every installed module's declared block renders to a sample that validates back to its
    defaults (``hostsflow config`` output is usable as it stands)."""
    from importlib.metadata import entry_points

    eps = list(entry_points(group="hostsflow.modules"))
    if not eps:
        pytest.skip("no hostsflow module is installed (pip install -e plugins/NAME)")
    reg = ConfigRegistry({ep.name: ep.dist.name if ep.dist else "?" for ep in eps})
    for ep in eps:
        ep.load()().sflow_declare_config(registry=reg)
    assert set(reg.specs) == {ep.name for ep in eps}
    for name, spec in reg.specs.items():
        text = render_config(reg, [name])
        config = parse_config_text(text, f"{name}.conf", reg)
        instance = config.modules[name]
        if spec.repeatable:
            (instance,) = instance
        assert isinstance(instance, spec.cls)
