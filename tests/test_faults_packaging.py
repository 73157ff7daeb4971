"""packaging/hostsflowd.service: ``systemd-analyze verify`` accepts it without a single warning,
its sandbox has the settings the agent relies on, and its capability bounding set covers every
capability an in-repo module asks for."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hostsflow.cli import DEFAULT_STATUS
from hostsflow.privileges import CAPABILITIES

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "packaging" / "hostsflowd.service"

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed (apt-get install systemd)")


def settings() -> dict[str, list[str]]:
    """Key -> every value given for it in the unit (comments and sections ignored)."""
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def verify(text: str, tmp_path: Path) -> str:
    """Run systemd-analyze verify on ``text`` installed as hostsflowd.service, with ExecStart
    pointing at this installation's hostsflowd; its diagnostics about our unit."""
    exe = shutil.which("hostsflowd") or str(Path(sys.executable).parent / "hostsflowd")
    unit = tmp_path / "hostsflowd.service"
    unit.write_text(text.replace("/usr/local/bin/hostsflowd", exe))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                       capture_output=True, text=True, timeout=60, check=False)
    lines = [l for l in (r.stdout + r.stderr).splitlines() if "hostsflowd" in l]
    if r.returncode != 0:
        lines.append(f"exit status {r.returncode}")
    return "\n".join(lines)


@needs_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    assert verify(UNIT.read_text(), tmp_path) == ""


@needs_analyze
def test_verify_would_catch_a_mistake(tmp_path):
    """The check above can fail: a bad value and an unknown key are reported."""
    bad = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystem=strickt")
    assert "protect system value" in verify(bad, tmp_path)
    bad = UNIT.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    assert "Unknown key" in verify(bad, tmp_path) or "NoNewPrivilege" in verify(bad, tmp_path)


def test_sandbox_settings():
    s = settings()
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                       ("RuntimeDirectory", "hostsflow")):
        assert s.get(key) == [value], key
    families = set(" ".join(s["RestrictAddressFamilies"]).split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"}
    # the status file the agent writes by default is in a writable directory
    assert str(Path(DEFAULT_STATUS).parent) in " ".join(s["ReadWritePaths"])
    # "+": systemd sends it with full privileges (the agent is nobody by then)
    assert s["ExecReload"] == ["+/bin/kill -HUP $MAINPID"]
    assert "--run-as nobody" in s["ExecStart"][0] and " -u " not in s["ExecStart"][0]
    assert "2" in s["RestartPreventExitStatus"][0]  # config errors are not retried


def test_bounding_set_covers_what_modules_ask_for():
    bounding = set(" ".join(settings()["CapabilityBoundingSet"]).split())
    assert bounding <= set(CAPABILITIES), bounding - set(CAPABILITIES)
    # dropping to the --run-as user needs these two, the agent's own bounding set CAP_SETPCAP
    assert {"CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"} <= bounding
    asked: set[str] = set()
    for path in (REPO / "plugins").glob("*/hostsflow_*/*.py"):
        text = path.read_text()
        if "retain_capabilities(" in text:  # every capability named in a string there
            asked |= set(re.findall(r"[\"'](CAP_[A-Z_]+)[\"']", text))
    assert {"CAP_NET_RAW", "CAP_NET_ADMIN"} <= asked  # pcap and nflog
    assert asked <= bounding, asked - bounding
