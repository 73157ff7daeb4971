"""``hostsflow view`` in a real browser: the real agent marks real services' traffic, and the
page shows each service's rate.

* a real ``systemd --user`` (the systemd module's test fixture, imported, not copied) runs two
  services: ``httpd`` (a TCP sink) and ``bird`` (a UDP sink);
* the real ``hostsflowd`` runs with ``pcap { dev = VETH sampling = 5 }``, ``tcp { }`` and
  ``systemd { markTraffic = on }``, sending to a real ``hostsflow view`` process;
* the test sends paced traffic to both services from a client in another network namespace
  across a veth pair (a remote host, so the tcp module looks the service's socket up) and
  counts every frame on the veth with its own AF_PACKET socket (the truth: frame length + 4
  for the FCS, as the agent reports it);
* headless Chromium (selenium + chromedriver) opens the page; the legend's rate of each service
  must be within 20% of the truth, and the TCP table must show the httpd connection's RTT.
  A screenshot is saved under ``tests/artifacts/`` and its path printed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hostsflow.testing import load_file_module

from . import chromium
from .faults_kit import socket_in
from .frame_counter import FrameCounter
from .marking_kit import DelayedVeth, wait_until

AgentProcess = load_file_module("hostsflow_tests_agent_process",
                                Path(__file__).with_name("agent_process.py")).AgentProcess

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
SAMPLING = 5
WINDOW = 10  # seconds the page averages over: ~800 samples of bird, ~1500 of httpd
TOLERANCE = 0.20


# the systemd module's test fixtures (a real ``systemd --user`` with a private bus)
_sd = load_file_module("hostsflow_systemd_tests_conftest",
                       REPO / "plugins" / "systemd" / "tests" / "conftest.py")
user_manager = _sd.user_manager  # the fixture, reused as is
free_port = _sd.free_port

SINK_PY = textwrap.dedent('''
    import socket, sys, threading
    kind, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    def drain(c):
        while c.recv(65536):
            pass
    if kind == "tcp":
        srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((addr, port)); srv.listen(16)
        while True:
            c, _ = srv.accept()
            threading.Thread(target=drain, args=(c,), daemon=True).start()
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((addr, port))
        while True:
            s.recv(65536)
''')


def _why_not(modules: tuple[str, ...] = ("hostsflow_pcap", "hostsflow_systemd", "hostsflow_tcp",
                                         "aiohttp", "selenium")) -> str | None:
    """Why the browser test cannot run here (a module or the browser missing), or None."""
    for mod in modules:
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed (scripts/install.sh installs it)"
    return chromium.why_not()


# ---------------------------------------------------------------- the truth on the wire


class Pacer(threading.Thread):
    """Sends ``size``-byte messages at ``per_second`` with ``send`` until stopped."""

    def __init__(self, send: Any, size: int, per_second: int) -> None:
        super().__init__(daemon=True)
        self.send, self.payload, self.per_second = send, b"x" * size, per_second
        self.stop_event = threading.Event()

    def run(self) -> None:
        t0, n = time.monotonic(), 0
        while not self.stop_event.is_set():
            due = t0 + n / self.per_second
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(min(delay, 0.05))
                continue
            self.send(self.payload)
            n += 1

    def stop(self) -> None:
        self.stop_event.set()
        self.join(2)


# ---------------------------------------------------------------- helpers


def udp_bound(addr: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((addr, port))
        except OSError:
            return True
    return False


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def start_view(sflow_port: int, http_port: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from hostsflow.cli import tools_main; sys.exit(tools_main())", "view", "--listen-sflow", f"127.0.0.1:{sflow_port}",
         "--http", f"127.0.0.1:{http_port}", "--window", str(WINDOW)],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def legend(driver: Any) -> dict[str, dict[str, float]]:
    return driver.execute_script("""
        const out = {};
        for (const li of document.querySelectorAll('#legend li[data-service]')) {
          out[li.dataset.service] = {bps: parseFloat(li.dataset.bps),
                                     text: li.querySelector('.rate').textContent};
        }
        return out;""")


# ---------------------------------------------------------------- the test


@pytest.fixture
def remote():
    """This host joined by a veth to a "remote" one in a namespace of its own."""
    veth = DelayedVeth(delay_ms=None)
    try:
        yield veth
    finally:
        veth.close()


def test_page_shows_traffic_by_service(user_manager, remote, tmp_path, monkeypatch, capsys):
    why = _why_not()
    if why:
        pytest.skip(why)
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium: never look for drivers on the network
    (tmp_path / "sink.py").write_text(SINK_PY)
    veth = remote
    here = veth.host_ip
    p_http, p_bird = free_port(), free_port()
    user_manager.add_service("httpd", [sys.executable, str(tmp_path / "sink.py"), "tcp", here,
                                       str(p_http)])
    user_manager.add_service("bird", [sys.executable, str(tmp_path / "sink.py"), "udp", here,
                                      str(p_bird)])
    wait_until(lambda: _accepts(here, p_http), 10, "httpd listening")
    wait_until(lambda: udp_bound(here, p_bird), 10, "bird listening")

    sflow_port, http_port = free_port(), free_port()
    view = start_view(sflow_port, http_port, tmp_path / "view.log")
    base = f"http://127.0.0.1:{http_port}/"
    try:
        wait_until(lambda: _services(base, None) is not None, 15, "hostsflow view answers")
    except AssertionError:
        view.kill()
        view.wait()
        raise
    conf = textwrap.dedent(f"""
        sflow {{
          collector {{ ip = 127.0.0.1 udpport = {sflow_port} }}
          polling = 2
          pcap {{ dev = {veth.host_dev} sampling = {SAMPLING} }}
          tcp {{ }}
          systemd {{
            slice = app.slice
            bus = "{user_manager.address}"
            markTraffic = on
          }}
        }}
        """)
    agent = AgentProcess(conf, tmp_path)
    counter = FrameCounter(veth.host_dev, {p_http: "httpd.service", p_bird: "bird.service"})
    profile = tempfile.mkdtemp(prefix="hostsflow-view-chromium-")
    driver = None
    pacers: list[Pacer] = []
    socks: list[socket.socket] = []
    try:
        wait_until(lambda: _services(base) >= {"httpd.service", "bird.service"}, 20,
                   "the view learns both services from the agent's counter samples")
        driver = chromium.browser(profile)
        driver.get(base)

        # the clients live in the other namespace: the service's end is the one local end,
        # which the tcp module looks up (it skips packets with two local ends, as hsflowd)
        tcp = socket_in(veth.ns, socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1000)
        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tcp.connect((here, p_http))
        udp = socket_in(veth.ns, socket.AF_INET, socket.SOCK_DGRAM)
        udp.connect((here, p_bird))
        socks += [tcp, udp]
        pacers = [Pacer(tcp.sendall, 1000, 500), Pacer(udp.send, 500, 400)]
        counter.counting = True
        t0 = time.monotonic()
        for p in pacers:
            p.start()
        time.sleep(WINDOW + 4)  # the window full of steady traffic, plus the agent's export
        shown = legend(driver)
        elapsed = time.monotonic() - t0
        truth = {n: counter.bytes[n] * 8 / elapsed for n in counter.bytes}
        conns = driver.execute_script(
            "return [...document.querySelectorAll('#connections tbody tr')]"
            ".map(tr => [...tr.cells].map(td => td.textContent));")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "view-traffic-by-service.png"
        driver.save_screenshot(str(shot))
        with capsys.disabled():
            print(f"\nscreenshot: {shot}")
            for n, want in truth.items():
                got = shown.get(n, {}).get("bps", 0.0)
                print(f"{n}: page {got / 1e6:.3f} Mb/s ({shown.get(n, {}).get('text')}), "
                      f"sent {want / 1e6:.3f} Mb/s ({counter.frames[n]} frames), "
                      f"error {100 * (got / want - 1):+.1f}%")
        for name in ("httpd.service", "bird.service"):
            assert name in shown, f"{name} not in the legend: {shown}"
            got, want = shown[name]["bps"], truth[name]
            assert abs(got - want) <= TOLERANCE * want, (name, got, want)
        rows = [r for r in conns if r and r[0] == "httpd.service"]
        assert rows, f"no httpd connection in the TCP table: {conns}"
        assert any(r[2] == f"{here}:{p_http}" or r[1] == f"{here}:{p_http}" for r in rows)
        assert all(float(r[4]) > 0 for r in rows), rows  # RTT from extended_tcp_info
    except BaseException:
        with capsys.disabled():
            print(f"\n--- agent log\n{agent.log()[-3000:]}\n--- view log\n"
                  f"{(tmp_path / 'view.log').read_text(errors='replace')[-2000:]}")
            try:
                print("--- snapshot", json.dumps(get_json(base + "api/snapshot"))[:3000])
            except OSError as exc:
                print(f"--- no snapshot: {exc}")
        raise
    finally:
        for p in pacers:
            p.stop()
        for s in socks:
            s.close()
        counter.close()
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        agent.stop()
        view.terminate()
        try:
            view.wait(10)
        except subprocess.TimeoutExpired:
            view.kill()
            view.wait()
        for unit in ("httpd", "bird"):
            try:
                user_manager.stop_unit(unit)
            except Exception as exc:  # noqa: BLE001 - the manager goes away with the module
                print(f"stopping {unit}: {exc}")


def _accepts(addr: str, port: int) -> bool:
    try:
        socket.create_connection((addr, port), 1).close()
        return True
    except OSError:
        return False


def _services(base: str, unreachable: Any = frozenset()) -> Any:
    """The service labels the view knows (``unreachable`` while it does not answer)."""
    try:
        return {s["label"] for s in get_json(base + "api/snapshot")["services"]}
    except OSError:
        return unreachable
