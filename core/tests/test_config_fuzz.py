"""Property: any text, random or a mutated valid config, gives an AgentConfig or a ConfigError
whose message points into the file; never another exception, never a hang."""

from __future__ import annotations

import re
import signal
from typing import Any

import attrs
from hostsflow.config import (
    AgentConfig,
    ConfigError,
    ConfigRegistry,
    on_off,
    option,
    parse_config_text,
    regex,
    speed_range,
)
from hostsflow.config.options import device
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@attrs.frozen
class PcapLike:
    dev: str | None = option(None, help="device", converter=device)
    speed: Any = option(None, help="speeds", converter=speed_range)
    promisc: bool = option(False, help="promisc", converter=on_off)
    pattern: Any = option(None, key="dev.pattern", help="regex", converter=regex)


def _registry() -> ConfigRegistry:
    reg = ConfigRegistry({"pcap": "hostsflow-pcap", "nflog": "hostsflow-nflog"})
    reg.block("pcap", PcapLike, repeatable=True)
    return reg


VALID = [
    "sflow {\n  collector { ip = 127.0.0.1 udpport = 6343 }\n}\n",
    "sflow{collector{ip=::1}sampling.10G=10000 agent.cidr=!10.0.0.0/8 pcap{speed=1G-}}",
    '# c\nSFLOW {\n collector\n {\n  ip 10.0.0.1; UDPPort 7000\n }\n pcap { dev.pattern = "e.*"'
    ' promisc on }\n polling = 20 headerBytes=256 loopback=on\n}\n',
]
FRAGMENTS = [
    "{", "}", "=", ";", "#", '"', " ", "\n", "\t", "\r\n", "sflow", "collector", "ip", "udpport",
    "sampling", "sampling.", "10G", "polling", "pcap", "nflog", "agent.cidr", "!", "/", "-",
    "1.2.3.4", "::1", "0", "400", "1K", "99999999999", "on", "off", "dev.pattern", "x", "é",
    "\x00", "\\", "headerBytes", "loopback", "uuid", "speed", "1G-", "-1", "9" * 40,
    "a{99999999999}", "(" * 120, "z" * 130, '"(((((((((("',
]

fragments = st.lists(st.sampled_from(FRAGMENTS), max_size=60).map("".join)


@st.composite
def mutated(draw: Any) -> str:
    text = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 12)))
        op = draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        piece = draw(st.sampled_from(FRAGMENTS))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "insert":
            text = text[:i] + piece + text[i:]
        elif op == "replace":
            text = text[:i] + piece + text[j:]
        else:
            text = text[:j] + text[i:j] + text[j:]
    return text


KEYS = ["sampling", "sampling.10G", "polling", "headerBytes", "datagramBytes", "agentIP",
        "agent", "agent.cidr", "subAgentId", "uuid", "refreshVMs", "dropPriv", "loopback",
        "samplingDirection", "nflogProbability", "nflogGroup"]
MODULE_KEYS = ["dev", "speed", "promisc", "dev.pattern"]
values = st.one_of(
    st.text(st.characters(blacklist_characters=' \t\r\n=;{}#"', blacklist_categories=["Cs"]),
            min_size=1, max_size=40),
    st.from_regex(r"\A[0-9]{1,30}[kKmMgGtTpP]?(-[0-9]{0,30}[kKmMgGtTpP]?)?\Z"),
    st.from_regex(r'\A"[^"#\n]{0,60}"\Z'),
    st.text("a(){}[]*+?0123456789,|\\^$.:<>=!-P", max_size=60).map(lambda t: f'"{t}"'),
)


@st.composite
def random_values(draw: Any) -> str:
    """A well-formed config whose values are random: exercises every converter."""
    top = [f"  {k} = {draw(values)}" for k in draw(st.lists(st.sampled_from(KEYS), max_size=4))]
    mod = [f"{k} = {draw(values)}" for k in draw(st.lists(st.sampled_from(MODULE_KEYS),
                                                          max_size=3))]
    # mostly a valid collector, so the values after it get converted too
    ip = draw(values if draw(st.integers(0, 4)) == 4 else st.sampled_from(["::1", "c.example"]))
    port = draw(values if draw(st.integers(0, 4)) == 4 else st.sampled_from(["6343", "65535"]))
    return (f"sflow {{\n  collector {{ ip = {ip} udpport = {port} }}\n" + "\n".join(top)
            + f"\n  pcap {{ {' '.join(mod)} }}\n}}\n")


class Hang(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise Hang("parse_config_text took more than 5 s")


def check(text: str) -> None:
    """The property; a SIGALRM after 5 s turns a hang (an endless loop) into a failure."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, 5.0)
    try:
        _check(text)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _check(text: str) -> None:
    try:
        config = parse_config_text(text, "f.conf", _registry())
    except ConfigError as exc:
        m = re.match(r"f\.conf:(\d+): \S", str(exc))
        assert m, str(exc)
        assert 1 <= int(m.group(1)) <= text.count("\n") + 1
        assert "\n" not in exc.message
    else:
        assert isinstance(config, AgentConfig) and config.collectors


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(fragments)
def test_fragments(text: str) -> None:
    check(text)


@FUZZ
@given(mutated())
def test_mutated_valid_configs(text: str) -> None:
    check(text)


@FUZZ
@given(random_values())
def test_random_values(text: str) -> None:
    check(text)


@FUZZ
@given(st.text(max_size=300))
def test_any_text(text: str) -> None:
    check(text)


def test_valid_seeds_are_valid() -> None:
    for text in VALID:
        assert parse_config_text(text, "f.conf", _registry()).collectors
