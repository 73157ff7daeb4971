"""DNS-SD as hsflowd does it (mod_dnssd.c, hsflowconfig.c dynamic_config_line): the config
spellings, the record formats, the value bounds, the refresh bounds and the start delay.  The
answers here are built by hand; tests/test_dns_sd.py gets them from a real dnsmasq."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from hostsflow.config.parser import ConfigError
from hostsflow.config.schema import parse_config_text
from hostsflow.dnssd.client import DnsSd
from hostsflow.dnssd.origins import origins
from hostsflow.dnssd.records import (
    Answer,
    Refused,
    SrvRecord,
    TxtString,
    apply,
    refresh_seconds,
    settings_from,
)

NAME = "_sflow._udp.example.com"


def conf(body: str) -> Any:
    return parse_config_text(f"sflow {{\n{body}\n}}\n", "a.conf")


def txt(*strings: str, ttl: int = 60) -> tuple[TxtString, ...]:
    return tuple(TxtString(s.encode(), ttl) for s in strings)


def answer(*strings: str, srv: tuple[SrvRecord, ...] = (SrvRecord("c1.example.com", 6343, 60),),
           ttl: int = 60) -> Answer:
    return Answer(NAME, "ok", srv=srv, txt=txt(*strings, ttl=ttl))


# ---------------------------------------------------------------- config spellings


@pytest.mark.parametrize("body", [
    "dns-sd { domain = .example.com }",
    "dns-sd { domain = example.com }",
    "dns-sd { DNSSD_domain = .example.com }",
    "DNSSD = on\nDNSSD_domain = .example.com",
    "dns-sd { }\nDNSSD_domain = .example.com",
])
def test_dns_sd_spellings_name_the_same_query_and_need_no_collector(body):
    c = conf(body)
    assert c.dns_sd is not None and c.dns_sd.name == NAME
    assert c.collectors == []


def test_without_a_domain_the_search_list_applies():
    assert conf("dns-sd { }").dns_sd.name == "_sflow._udp"
    assert conf("DNSSD = on").dns_sd.name == "_sflow._udp"


def test_dns_sd_off_still_needs_a_collector():
    assert conf("DNSSD = off\ncollector { ip = 1.2.3.4 }").dns_sd is None
    with pytest.raises(ConfigError, match="no collector"):
        conf("DNSSD = off\nDNSSD_domain = .example.com")


def test_file_collectors_are_not_used_with_dns_sd_and_a_note_says_so():
    c = conf("dns-sd { domain = .example.com }\ncollector { ip = 1.2.3.4 }")
    assert any("collectors come from DNS" in n.message for n in c.notes)
    assert apply(c, None).collectors == []


def test_bad_dns_sd_block_values_name_file_and_line():
    with pytest.raises(ConfigError, match="a.conf:3: bad value for 'startDelay'"):
        conf("dns-sd {\n startDelay = 301 }")
    with pytest.raises(ConfigError, match="a.conf:3: unknown key 'server'"):
        conf("dns-sd {\n server = 1.2.3.4 }")


# ---------------------------------------------------------------- record formats


def test_srv_answers_are_collectors_target_slash_port_sorted_dot_skipped():
    a = answer(srv=(SrvRecord("c2.example.com", 6344, 60), SrvRecord(".", 0, 60),
                    SrvRecord("c1.example.com", 6343, 30)))
    s = settings_from(a)
    assert [(c.ip, c.udpport) for c in s.collectors] == [("c1.example.com", 6343),
                                                         ("c2.example.com", 6344)]
    assert s.sources["collector"].record == "SRV" and s.sources["collector"].ttl == 30


def test_txt_keys_hsflowd_takes():
    s = settings_from(answer("txtvers=1", "sampling=200", "sampling.10g=1000",
                             "sampling.HTTP=50", "polling=20", "polling.http=5",
                             "headerBytes=64", "agentIP=10.0.0.1", "agent=eth0",
                             "agent.cidr=10.0.0.0/8", "agent.cidr=!fe80::/10",
                             "collector=192.0.2.9/6400/eth1", 'dropLimit=5', "datagramBytes=9000"))
    v = s.values
    assert v["sampling"] == 200 and v["sampling_by"] == {"10G": 1000, "http": 50}
    assert v["polling"] == 20 and v["polling_by"] == {"http": 5}
    assert v["header_bytes"] == 64 and v["agent_ip"] == "10.0.0.1" and v["agent"] == "eth0"
    assert [str(c.network) for c in v["agent_cidr"]] == ["10.0.0.0/8", "fe80::/10"]
    assert [c.negate for c in v["agent_cidr"]] == [False, True]
    assert ("192.0.2.9", 6400, "eth1") in [(c.ip, c.udpport, c.dev) for c in s.collectors]
    # hsflowd ignores (and logs) what it does not take from DNS; txtvers silently
    assert s.ignored == ("dropLimit=5", "datagramBytes=9000")
    assert s.sources["sampling.10G"].record == "TXT" and s.sources["polling"].ttl == 60


def test_header_bytes_above_256_are_taken_as_256():
    assert settings_from(answer("headerBytes=1000")).values["header_bytes"] == 256


@pytest.mark.parametrize("bad, why", [
    ("sampling=abc", "expected an integer"),
    ("sampling=10000001", "out of range 0..10000000"),
    ("polling=301", "out of range 0..300"),
    ("polling.http=-1", "expected an integer"),
    ("noequals", "not key=value"),
    ("=5", "not key=value"),
    ("agentIP=not..an..address", "neither an IP address nor a hostname"),
    ("agent.cidr=10.0.0.0/33", "expected a CIDR"),
    ("collector=192.0.2.1/0", "out of range 1..65535"),
    ("collector=192.0.2.1/1/2/3/4", "expected address/port/device"),
])
def test_a_bad_value_refuses_the_whole_answer_naming_the_record(bad, why):
    with pytest.raises(Refused) as exc:
        settings_from(answer("sampling=100", bad))
    assert why in str(exc.value) and "TXT" in str(exc.value)


def test_a_bad_srv_target_refuses_the_answer():
    with pytest.raises(Refused, match="SRV bad_name!.example.com"):
        settings_from(answer(srv=(SrvRecord("bad_name!.example.com", 6343, 60),)))


def test_non_ascii_txt_refuses_the_answer():
    bad = Answer(NAME, "ok", srv=(SrvRecord("c1.example.com", 6343, 60),),
                 txt=(TxtString("sampling=1\u00e9".encode(), 60),))
    with pytest.raises(Refused, match="not ASCII"):
        settings_from(bad)


# ---------------------------------------------------------------- refresh and start delay


@pytest.mark.parametrize("ttl, seconds", [(None, 300), (0, 300), (1, 10), (9, 10), (10, 10),
                                          (61, 61), (86400, 86400)])
def test_refresh_after_the_smallest_ttl_300_without_never_under_10(ttl, seconds):
    assert refresh_seconds(ttl) == seconds


def test_the_smallest_ttl_of_srv_and_txt_counts():
    a = Answer(NAME, "ok", srv=(SrvRecord("c1.example.com", 6343, 120),), txt=txt("x=1", ttl=45))
    assert a.ttl == 45 and settings_from(a).ttl == 45


def test_first_query_after_a_random_1_to_30_seconds():
    cfg = conf("dns-sd { domain = .example.com }").dns_sd
    assert cfg.start_delay == 30
    delays = set()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for seed in range(200):
            client = DnsSd(cfg, lambda s: None, _Log(), random.Random(seed))
            client.start(loop)
            delays.add(client._timer.when() - loop.time())
            client.stop()

    asyncio.run(run())
    whole = {round(d) for d in delays if d > 0.5}
    assert min(whole) == 1 and max(whole) == 30 and len(whole) > 20


# ---------------------------------------------------------------- applying, keeping


class _Log:
    """Collects log calls (event, fields) as structlog would get them."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **kw: self.lines.append((level, event, kw))


def test_dns_settings_override_the_file_the_rest_stays_from_the_file():
    file = conf("dns-sd { domain = .example.com }\nsampling = 400\nsampling.1G = 1000\n"
                "polling = 30\nheaderBytes = 96\nagent.cidr = 192.168.0.0/16")
    s = settings_from(answer("sampling=20", "sampling.10G=50", "agent.cidr=10.0.0.0/8"))
    c = apply(file, s)
    assert c.sampling == 20 and c.sampling_by == {"1G": 1000, "10G": 50}
    assert c.polling == 30 and c.header_bytes == 96
    assert [str(x.network) for x in c.agent_cidr] == ["10.0.0.0/8"]  # replaces the file's
    assert [x.ip for x in c.collectors] == ["c1.example.com"]
    where = origins(c, file, s)
    assert where["sampling"] == {"value": 20, "from": "dns", "record": f"TXT {NAME}", "ttl": 60}
    assert where["collector"]["from"] == "dns" and where["collector"]["record"] == f"SRV {NAME}"
    assert where["polling"] == {"value": 30, "from": "file", "line": "a.conf:5"}
    assert where["headerBytes"]["line"] == "a.conf:6"
    assert where["sampling.1G"]["from"] == "file" and where["agentIP"]["from"] == "default"


def test_failed_or_refused_answers_keep_the_last_good_one_logged_once():
    cfg = conf("dns-sd { domain = .example.com }").dns_sd
    installed: list[Any] = []
    log = _Log()
    client = DnsSd(cfg, installed.append, log, random.Random(1))
    client.take(answer("sampling=20"))
    client.take(answer("sampling=20"))  # the same again: nothing to install
    assert len(installed) == 1 and client.state == "ok"
    for _ in range(3):
        client.take(Answer(NAME, "failed", error="Timeout"))
    client.take(answer("polling=999"))
    client.take(answer("polling=999"))
    assert len(installed) == 1 and client.settings.values == {"sampling": 20}
    assert client.state == "refused" and "polling" in client.error
    events = [e for _, e, _ in log.lines]
    assert events.count("dns_sd_query_failed") == 1
    client.take(answer("sampling=30"))
    assert len(installed) == 2 and installed[-1].values == {"sampling": 30}
    refused = [kw for _, e, kw in log.lines if e == "dns_sd_answer_refused"]
    assert len(refused) == 1 and "TXT 'polling=999'" in refused[0]["reason"]
    # no SRV record: no collector (export stops, as in hsflowd), the rest from the file
    client.take(Answer(NAME, "none"))
    assert installed[-1].collectors == () and client.state == "none"
