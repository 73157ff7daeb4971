"""The hsflowd.conf grammar: tables of good texts with their exact trees, and of bad texts with
their exact ``FILE:LINE: message``."""

from __future__ import annotations

from typing import Any

import pytest
from hostsflow.config.parser import Block, ConfigError, parse


def shape(block: Block) -> Any:
    """A block as plain data: (name, line, [(key, value, line)...], [sub-blocks...])."""
    return (block.name, block.line, [(e.key, e.value, e.line) for e in block.entries],
            [shape(b) for b in block.blocks])


def only(text: str) -> Any:
    """The shape of the single top-level block of ``text``."""
    root = parse(text, "t.conf")
    assert root.entries == [] and len(root.blocks) == 1
    return shape(root.blocks[0])


GOOD = [
    ("one line", "sflow { collector { ip = 1.2.3.4 } }",
     ("sflow", 1, [], [("collector", 1, [("ip", "1.2.3.4", 1)], [])])),
    ("braces glued to words", "sflow{collector{ip=1.2.3.4}}",
     ("sflow", 1, [], [("collector", 1, [("ip", "1.2.3.4", 1)], [])])),
    ("all separator styles", "sflow {\n a = 1\n b=2\n c 3\n d = 4;\n e=5;f=6\n}",
     ("sflow", 1, [("a", "1", 2), ("b", "2", 3), ("c", "3", 4), ("d", "4", 5), ("e", "5", 6),
                   ("f", "6", 6)], [])),
    ("comments, even with braces in them",
     "# top comment {\nsflow { # open {\n  a = 1 # b = 2 }\n  # }\n}\n",
     ("sflow", 2, [("a", "1", 3)], [])),
    ("quoted value keeps separators and braces", 'sflow { dev.pattern = "eth{0,2}; x=y" }',
     ("sflow", 1, [("dev.pattern", "eth{0,2}; x=y", 1)], [])),
    ("255-character value", "sflow { x = " + "v" * 255 + " }",
     ("sflow", 1, [("x", "v" * 255, 1)], [])),
    ("empty quoted value", 'sflow { x = "" }', ("sflow", 1, [("x", "", 1)], [])),
    ("quoted value glued to a brace", 'sflow{x="a}"}', ("sflow", 1, [("x", "a}", 1)], [])),
    ("brace on its own line", "sflow\n{\n  collector\n  {\n    ip 10.0.0.1\n  }\n}",
     ("sflow", 1, [], [("collector", 3, [("ip", "10.0.0.1", 5)], [])])),
    ("key spelling kept as written", "SFlow { UDPPort = 6343 }",
     ("SFlow", 1, [("UDPPort", "6343", 1)], [])),
    ("repeated blocks and keys in file order",
     "sflow {\n collector { ip=a }\n agent.cidr = 10.0.0.0/8\n collector { ip=b }\n"
     " agent.cidr = !fe80::/10\n}",
     ("sflow", 1, [("agent.cidr", "10.0.0.0/8", 3), ("agent.cidr", "!fe80::/10", 5)],
      [("collector", 2, [("ip", "a", 2)], []), ("collector", 4, [("ip", "b", 4)], [])])),
    ("CRLF and tabs", "sflow {\r\n\tsampling\t=\t400\r\n}\r\n",
     ("sflow", 1, [("sampling", "400", 2)], [])),
    ("stray '=' before a block is a separator, as in hsflowd", "sflow { pcap = { dev=eth0 } }",
     ("sflow", 1, [], [("pcap", 1, [("dev", "eth0", 1)], [])])),
    ("three levels deep", "sflow { opx { port { dev = e1 } } }",
     ("sflow", 1, [], [("opx", 1, [], [("port", 1, [("dev", "e1", 1)], [])])])),
    ("values with ! - . : /", "sflow { speed=1G- x=!10.0.0.0/8 y=fe80::1%eth0 z=a.b-c }",
     ("sflow", 1, [("speed", "1G-", 1), ("x", "!10.0.0.0/8", 1), ("y", "fe80::1%eth0", 1),
                   ("z", "a.b-c", 1)], [])),
    ("'=' and ':' inside a value, unquoted (D-Bus addresses)",
     "sflow {\n bus = unix:path=/run/x\n b2=unix:path=/run/y,guid=0a1b\n c = a=b=c; d = 1\n}",
     ("sflow", 1, [("bus", "unix:path=/run/x", 2), ("b2", "unix:path=/run/y,guid=0a1b", 3),
                   ("c", "a=b=c", 4), ("d", "1", 4)], [])),
    ("keys may hold dots, dashes and underscores",
     "sflow { sampling.bps_ratio=0 dns-sd { domain=.x } xen.update.dominfo=on }",
     ("sflow", 1, [("sampling.bps_ratio", "0", 1), ("xen.update.dominfo", "on", 1)],
      [("dns-sd", 1, [("domain", ".x", 1)], [])])),
]


@pytest.mark.parametrize("text, expected", [(t, e) for _, t, e in GOOD],
                         ids=[n for n, _, _ in GOOD])
def test_good(text: str, expected: Any) -> None:
    assert only(text) == expected


def test_empty_and_comment_only_texts_give_an_empty_root() -> None:
    for text in ("", "\n\n", "# nothing\n   # here\n", " ; = ;\n"):
        root = parse(text, "t.conf")
        assert (root.name, root.line, root.entries, root.blocks) == ("", 0, [], [])


def test_case_insensitive_lookup() -> None:
    root = parse("SFLOW { Sampling = 1 sampling = 2 COLLECTOR { IP = x } }", "t.conf")
    assert root.sub("sflow")[0].name == "SFLOW"
    sflow = root.sub("Sflow")[0]
    assert [e.value for e in sflow.get("SAMPLING")] == ["1", "2"]
    assert [e.norm for e in sflow.entries] == ["sampling", "sampling"]
    assert sflow.sub("collector")[0].get("ip")[0].value == "x"
    assert sflow.file == "t.conf"


BAD = [
    ("key without value", "sflow { a }", "t.conf:1: missing value for 'a'"),
    ("value on the next line", "sflow {\n a\n = 1\n}", "t.conf:2: missing value for 'a'"),
    ("key at end of file", "sflow {\n a = 1\n b", "t.conf:3: missing value for 'b'"),
    ("a glued '=' chain still has one value per key", "sflow {\n a = b=c d\n}",
     "t.conf:2: missing value for 'd'"),
    ("glued value over 255 characters", "sflow {\n a = " + "x" * 200 + "=" + "y" * 60 + "\n}",
     "t.conf:2: 'xxxxxxxxxxxxxxxxxxxx...' is longer than 255 characters"),
    ("close without open", "sflow { }\n}", "t.conf:2: unexpected '}' (no block is open)"),
    ("block without name", "sflow {\n { a = 1 }\n}",
     "t.conf:2: unexpected '{' (a block needs a name: name { ... })"),
    ("quoted key", 'sflow {\n "a" = 1\n}',
     't.conf:2: unexpected quoted string "a" (expected a key or a block name)'),
    ("two values", "sflow {\n sampling = 400 800\n}",
     "t.conf:2: unexpected '800' after 'sampling = 400' (one value per key)"),
    ("key starting with a digit", "sflow {\n 9x = 1\n}",
     "t.conf:2: unexpected '9x' (expected a key or a block name)"),
    ("key with odd characters", "sflow {\n a/b = 1\n}",
     "t.conf:2: unexpected 'a/b' (expected a key or a block name)"),
    ("unterminated quote", 'sflow {\n a = "abc\n}',
     "t.conf:2: unterminated quoted string (a \"...\" ends on its own line and cannot contain "
     "'#')"),
    ("'#' inside quotes starts a comment (hsflowd rule)", 'sflow {\n a = "x#y"\n}',
     "t.conf:2: unterminated quoted string (a \"...\" ends on its own line and cannot contain "
     "'#')"),
    ("quote glued to a word", 'sflow {\n a = ab"c"\n}',
     "t.conf:2: stray '\"' after 'ab' (put the whole value in quotes)"),
    ("four levels deep", "sflow {\n a {\n  b {\n   c {\n   }\n  }\n }\n}",
     "t.conf:4: too many nested blocks at 'c' (at most 3 levels)"),
    ("unclosed outer block", "sflow {\n collector { ip = 1.2.3.4 }\n",
     "t.conf:1: 'sflow' block is never closed (missing '}' before the end of the file)"),
    ("unclosed inner block", "sflow {\n collector {\n  ip = 1.2.3.4\n",
     "t.conf:2: 'collector' block is never closed (missing '}' before the end of the file)"),
    ("one '}' short: the outer block is the one reported", "sflow {\n collector {\n ip = x\n}",
     "t.conf:1: 'sflow' block is never closed (missing '}' before the end of the file)"),
    ("token longer than 255 characters", "sflow {\n a = " + "x" * 256 + "\n}",
     "t.conf:2: 'xxxxxxxxxxxxxxxxxxxx...' is longer than 255 characters"),
    ("quoted token longer than 255 characters", 'sflow {\n a = "' + "y" * 256 + '"\n}',
     "t.conf:2: '\"yyyyyyyyyyyyyyyyyyy...' is longer than 255 characters"),
    ("close brace as value", "sflow {\n sampling = }\n",
     "t.conf:2: missing value for 'sampling'"),
]


@pytest.mark.parametrize("text, message", [(t, m) for _, t, m in BAD],
                         ids=[n for n, _, _ in BAD])
def test_bad(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text, "t.conf")
    assert str(info.value) == message
    assert info.value.file == "t.conf"
    assert message.startswith(f"t.conf:{info.value.line}: {info.value.message}")


def test_error_without_line_has_no_line_part() -> None:
    assert str(ConfigError("/etc/x.conf", 0, "cannot read")) == "/etc/x.conf: cannot read"
    assert str(ConfigError("/etc/x.conf", 7, "boom")) == "/etc/x.conf:7: boom"


def test_large_file_parses_quickly() -> None:
    import time

    body = "".join(f" agent.cidr = 10.{i // 256 % 256}.{i % 256}.0/24 # n{i}\n"
                   for i in range(50_000))
    text = "sflow {\n collector { ip = 127.0.0.1 }\n" + body + "}\n"
    start = time.perf_counter()
    root = parse(text, "big.conf")
    elapsed = time.perf_counter() - start
    sflow = root.blocks[0]
    assert len(sflow.entries) == 50_000 and sflow.entries[-1].line == 50_002
    assert elapsed < 5.0, f"50k-line file took {elapsed:.2f}s"
