"""End to end: the real ``hostsflowd`` in namespace ``a`` with ``pcap { }`` and ``tcp { }``,
a bulk TCP transfer to ``b``, datagrams received by a collector socket in ``a`` and decoded.

Here the lookup runs in the agent's own namespace and "local" comes from the agent's interface
addresses (no ``sample.netns``)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
from hostsflow.sflow.datagram import decode_datagram
from hostsflow.sflow.records import ExtendedTcpInfo

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_hostsflowd_with_pcap_adds_extended_tcp_info(pair, kit):
    if importlib.util.find_spec("hostsflow_pcap") is None or shutil.which("hostsflowd") is None:
        pytest.skip("needs the hostsflow-pcap module and the hostsflowd command installed")

    col = kit.in_netns(pair.pa, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    col.bind(("127.0.0.1", 0))
    col.settimeout(0.2)
    conf = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False)
    conf.write(
        "sflow {\n"
        f"  collector {{ ip = 127.0.0.1 udpport = {col.getsockname()[1]} }}\n"
        "  polling = 0\n"
        f"  pcap {{ dev = {pair.va} sampling = 20 }}\n"
        "  tcp { }\n"
        "}\n"
    )
    conf.close()
    cli, srv, lst = pair.connect(socket.AF_INET)
    proc = subprocess.Popen(
        ["ip", "netns", "exec", pair.a, "hostsflowd", "-f", conf.name, "--status-file", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    pump = None
    try:
        time.sleep(1.5)  # start-up: taps opened
        assert proc.poll() is None, proc.stderr.read()
        lport = cli.getsockname()[1]
        pump = kit.Pump(cli, srv)
        recs: list[ExtendedTcpInfo] = []
        end = time.monotonic() + 6
        while time.monotonic() < end and not (
            {r.dir for r in recs} == {1, 2} and len(recs) > 20
        ):
            try:
                data = col.recv(65536)
            except TimeoutError:
                continue
            for s in decode_datagram(data).samples:
                rs = [r for r in getattr(s, "records", []) if isinstance(r, ExtendedTcpInfo)]
                recs += rs
        pump.finish()
        ss = kit.ss_info(pair, "a", pair.a4, lport, pair.b4, lst.getsockname()[1])
        assert recs, "no extended_tcp_info in the datagrams"
        assert {r.dir for r in recs} == {1, 2}, "both the data sent and the ACKs received"
        assert all(r.snd_mss == ss["mss"] and r.pmtu == 1500 for r in recs)
        assert all(r.rtt > 0 and r.snd_cwnd > 0 for r in recs)
    finally:
        if pump is not None:
            pump.finish()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.unlink(conf.name)
        for s in (cli, srv, lst, col):
            s.close()
