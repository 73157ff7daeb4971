"""Loading and guarding modules: third-party distributions found through their entry points
(real ``.dist-info`` directories on ``sys.path`` of a child process, as pip would leave them),
refused with a message naming the distribution when they do not import or do not fit the hook
specs; ``hostsflow modules`` and ``hostsflow config`` on them; guards and quarantine in-process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import structlog

import hostsflow
from hostsflow.modules import QUARANTINE_AFTER, ModuleHost, ModuleLoadError
from hostsflow.testing import AgentHarness

# ---------------------------------------------------------------- throw-away distributions

GOOD = '''
import attrs
import hostsflow
from hostsflow.config import on_off, option, u32

@attrs.frozen
class WidgetConfig:
    colour: str = option("blue", help="the widget's colour")
    size: int = option(3, converter=u32(1, 9), help="how big")
    shiny: bool = option(False, converter=on_off, help="polish it")

class WidgetModule:
    @hostsflow.hookimpl
    def sflow_declare_config(self, registry):
        registry.block("widget", WidgetConfig, help="a throw-away third-party module")

    @hostsflow.hookimpl
    def sflow_tick(self, agent, now):
        agent.count("widget.ticks")
'''
BROKEN = '''
import hostsflow
import hostsflow_no_such_dependency  # the import fails
'''
TYPO = '''
import hostsflow

class TypoModule:
    @hostsflow.hookimpl
    def sflow_declare_config(self, registry):
        pass

    @hostsflow.hookimpl
    def sflow_flow_sampel(self, agent, sample):  # not a hook
        pass
'''
BADARGS = '''
import hostsflow

class BadArgsModule:
    @hostsflow.hookimpl
    def sflow_tick(self, agent, when):  # the spec says (agent, now)
        pass
'''
NOHOOKS = '''
class NoHooksModule:
    def sflow_tick(self, agent, now):  # forgot @hostsflow.hookimpl
        pass
'''

DISTS = {
    # distribution: (module name, entry-point name, value, source)
    "hostsflow-widget": ("tp_widget", "widget", "tp_widget:WidgetModule", GOOD),
    "hostsflow-broken": ("tp_broken", "broken", "tp_broken:Module", BROKEN),
    "hostsflow-typo": ("tp_typo", "typo", "tp_typo:TypoModule", TYPO),
    "hostsflow-badargs": ("tp_badargs", "badargs", "tp_badargs:BadArgsModule", BADARGS),
    "hostsflow-nohooks": ("tp_nohooks", "nohooks", "tp_nohooks:NoHooksModule", NOHOOKS),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory laid out like site-packages with the throw-away distributions installed:
    a module file and a ``<name>-<version>.dist-info`` with METADATA and entry_points.txt."""
    root = tmp_path_factory.mktemp("site")
    for dist, (module, ep, value, source) in DISTS.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        info = root / f"{dist.replace('-', '_')}-0.3.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3.1\n")
        (info / "entry_points.txt").write_text(f"[hostsflow.modules]\n{ep} = {value}\n")
        (info / "RECORD").write_text("")
    return root


def run(site: Path, *args: str, tool: str = "tools_main") -> subprocess.CompletedProcess[str]:
    """Run a hostsflow command line in a child whose sys.path includes ``site``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]))
    code = f"import sys; from hostsflow.cli import {tool}; sys.exit({tool}(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=60)


def modules_table(out: str) -> dict[str, str]:
    rows = {}
    for line in out.splitlines()[1:]:
        if line and not line.startswith(" "):
            rows[line.split()[0]] = line
    return rows


def test_modules_lists_third_party_modules_with_load_errors(site: Path, tmp_path: Path) -> None:
    conf = tmp_path / "h.conf"
    conf.write_text("sflow { collector { ip = 127.0.0.1 } widget { } }")
    r = run(site, "modules", "-v", "-f", str(conf))
    assert r.returncode == 1, r.stdout + r.stderr  # some modules fail to load
    rows = modules_table(r.stdout)
    assert rows["widget"].split()[1:5] == ["hostsflow-widget", "0.3.1", "yes", "ok"]
    assert "hooks: sflow_declare_config, sflow_tick" in r.stdout
    expected = {
        "broken": "import failed: ModuleNotFoundError",
        "typo": "implements unknown hook sflow_flow_sampel",
        "badargs": "'when'",
        "nohooks": "implements no hostsflow hook",
    }
    for name, why in expected.items():
        row = rows[name]
        assert f"ERROR: module '{name}' (hostsflow-{name}):" in row and why in row, row
        assert row.split()[3] == "no"
    # the in-repo modules installed here are listed the same way
    for name in ("user",):
        if name in rows:
            assert rows[name].endswith("ok")


@pytest.mark.parametrize("name", ["broken", "typo", "badargs", "nohooks"])
def test_agent_refuses_an_enabled_module_that_does_not_load(
    site: Path, tmp_path: Path, name: str,
) -> None:
    conf = tmp_path / "h.conf"
    conf.write_text(f"sflow {{\n  collector {{ ip = 127.0.0.1 }}\n  {name} {{ }}\n}}\n")
    r = run(site, "-f", str(conf), "--test", "--test-seconds", "0", tool="agent_main")
    assert r.returncode == 2
    assert r.stderr.startswith(f"{conf}:3: module '{name}' (hostsflow-{name}):"), r.stderr
    assert "Traceback" not in r.stderr


def test_agent_runs_a_third_party_module(site: Path, tmp_path: Path) -> None:
    conf = tmp_path / "h.conf"
    # installed but not enabled, the broken modules are never imported
    conf.write_text("sflow { collector { ip = 127.0.0.1 } widget { colour = red } }")
    r = run(site, "-f", str(conf), "--test", "--test-seconds", "0", tool="agent_main")
    assert r.returncode == 0, r.stderr
    assert '"widget"' in r.stderr  # the started line lists it among the modules


def test_config_prints_annotated_blocks_for_third_party_modules(site: Path) -> None:
    r = run(site, "config", "widget")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[lines.index("  widget {") - 1:lines.index("  widget {") + 9] == [
        "  # a throw-away third-party module",
        "  widget {",
        "    # the widget's colour [text]",
        "    # colour = blue",
        "    # how big [integer 1..9]",
        "    # size = 3",
        "    # polish it [on/off]",
        "    # shiny = off",
        "  }",
        "}",
    ]
    assert lines[1] == "sflow {"  # one block: the module's inside the agent's
    everything = run(site, "config")
    assert everything.returncode == 1  # the broken ones are named
    assert "sflow {" in everything.stdout and "  # widget {" in everything.stdout
    assert "# broken: not loaded: module 'broken' (hostsflow-broken)" in everything.stdout
    unknown = run(site, "config", "nosuch")
    assert unknown.returncode == 2 and "unknown module 'nosuch'" in unknown.stderr


def test_sample_config_from_hostsflow_config_is_valid(site: Path, tmp_path: Path) -> None:
    """What ``hostsflow config widget`` prints is a valid config: save it and run."""
    conf = tmp_path / "h.conf"
    conf.write_text(run(site, "config", "widget").stdout)
    r = run(site, "-f", str(conf), "--test", "--test-seconds", "0", tool="agent_main")
    assert r.returncode == 0, r.stderr
    assert '"widget"' in r.stderr  # enabled: the started line lists it among the modules
    # everything, as printed: loads, and enables none of the modules
    conf.write_text(run(site, "config").stdout)
    r = run(site, "-f", str(conf), "--test", "--test-seconds", "0", tool="agent_main")
    assert r.returncode == 0 and '"widget"' not in r.stderr, r.stderr


# ---------------------------------------------------------------- in-process: specs and guards


class Typo:
    @hostsflow.hookimpl
    def sflow_tik(self, agent: Any) -> None:
        pass


def test_register_refuses_unknown_hooks_and_arguments() -> None:
    host = ModuleHost()
    with pytest.raises(ModuleLoadError, match="unknown hook sflow_tik"):
        host.register("typo", Typo(), "dist-x")

    class Bad:
        @hostsflow.hookimpl
        def sflow_tock(self, agent: Any, later: float) -> None:
            pass

    with pytest.raises(ModuleLoadError) as err:
        host.register("bad", Bad(), "dist-y")
    assert err.value.distribution == "dist-y" and "later" in str(err.value)
    assert host.states == {} and host.pm.get_plugins() == set()


class Raiser:
    def __init__(self) -> None:
        self.calls = 0

    @hostsflow.hookimpl
    def sflow_tick(self, agent: Any) -> None:
        self.calls += 1
        raise RuntimeError("boom")

    @hostsflow.hookimpl
    def sflow_sampling_rate(self, interface: Any) -> int:
        raise RuntimeError("boom")


class Fallback:
    @hostsflow.hookimpl
    def sflow_sampling_rate(self, interface: Any) -> int:
        return 123


def test_guard_contains_errors_and_quarantines_after_repeated_failures() -> None:
    r = Raiser()
    conf = "sflow { collector { ip = 127.0.0.1 } polling = 0 }"
    with structlog.testing.capture_logs() as logs:
        with AgentHarness(conf, modules={"fallback": Fallback(), "raiser": r}) as h:
            # a firstresult hook: the failing module's turn passes to the next one
            (intf,) = list(h.agent.interfaces)[:1]
            assert h.agent.sampling_rate(intf) == 123
            h.tick(QUARANTINE_AFTER + 5)
            state = h.host.states["raiser"]
            assert state.quarantined
            assert r.calls == QUARANTINE_AFTER - 1  # + 1 sampling_rate failure
            assert len(h.datagrams) == 0  # nothing to send, but every second still ran
            assert h.agent.sampling_rate(intf) == 123
    errors = [e for e in logs if e["event"] == "module_error"]
    assert {e["hook"] for e in errors} == {"sflow_tick", "sflow_sampling_rate"}
    assert len(errors) == 2  # once per hook, rate limited
    quarantined = [e for e in logs if e["event"] == "module_quarantined"]
    assert len(quarantined) == 1 and quarantined[0]["module"] == "raiser"
