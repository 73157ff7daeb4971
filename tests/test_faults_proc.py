"""A /proc file going bad under a running ``hostsflowd``: the agent runs in a private mount
namespace, and mid-run /proc/loadavg is covered with garbage (then uncovered again) from
outside.  The host record that needs it (host_cpu, 2003) is left out while it lasts, every other
host and interface record still goes out each poll, the fault is logged once and counted per
poll, and host_cpu is back once the file is."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
from hostsflow.sflow import records as R
from hostsflow.testing import UdpCollector

pytestmark = [pytest.mark.root, pytest.mark.slow]


def host_samples(col: UdpCollector, t0: float) -> list[object]:
    from hostsflow.sflow.datagram import decode_datagram

    return [s for raw, at in zip(list(col.raw), list(col.received_at)) if at >= t0
            for s in decode_datagram(raw).counter_samples
            if (s.source.ds_class, s.source.ds_index) == (2, 1)]


def has_cpu(sample: object) -> bool:
    return any(isinstance(r, R.HostCpu) for r in sample.records)  # type: ignore[attr-defined]


def wait(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.1)


def test_proc_file_going_bad_mid_run(tmp_path):
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (util-linux)")
    bad = tmp_path / "loadavg"
    bad.write_text("not a load average\n")
    with UdpCollector() as col:
        conf = tmp_path / "hsflowd.conf"
        conf.write_text(f"sflow {{\n  collector {{ ip = 127.0.0.1 udpport = {col.port} }}\n"
                        "  polling = 1\n}\n")
        log_path = tmp_path / "agent.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", sys.executable, "-m", "hostsflow",
                 "-f", str(conf), "--status-file", ""], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait(lambda: len(host_samples(col, 0)) >= 2, 10, "host samples")
            assert all(has_cpu(s) for s in host_samples(col, 0))
            subprocess.run(["nsenter", "-t", str(proc.pid), "-m", "mount", "--bind", str(bad),
                            "/proc/loadavg"], check=True, timeout=10)
            t_bad = time.time()
            time.sleep(1.2)
            t_check = time.time()
            wait(lambda: len(host_samples(col, t_check)) >= 4, 10, "host samples while bad")
            during = host_samples(col, t_check)
            assert not any(has_cpu(s) for s in during), "host_cpu sent from a garbage file"
            for s in during:  # everything else is still there
                kinds = {type(r) for r in s.records}  # type: ignore[attr-defined]
                assert {R.HostDescr, R.HostMemory, R.HostDiskIo, R.HostNetIo} <= kinds
            subprocess.run(["nsenter", "-t", str(proc.pid), "-m", "umount", "/proc/loadavg"],
                           check=True, timeout=10)
            t_good = time.time()
            wait(lambda: any(has_cpu(s) for s in host_samples(col, t_good)), 5, "host_cpu back")
            assert proc.poll() is None
        finally:
            proc.terminate()
            status = proc.wait(10)
    assert status == 0
    text = log_path.read_text()
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    failed = [e for e in events if e["event"] == "counter_read_failed"]
    assert len(failed) == 1, failed  # once while it lasts, not once per poll
    assert failed[0]["error"].startswith("host_cpu: /proc/loadavg")  # names record and file
    recovered = [e for e in events if e["event"] == "recovered"]
    assert [e["key"] for e in recovered] == ["counter_read:host_cpu"]  # and says when it is over
    (stopped,) = [e for e in events if e["event"] == "stopped"]
    assert stopped["faults.counter_read"] >= 4  # counted at every poll
    assert "Traceback" not in text
    print(f"FIGURES bad for {t_good - t_bad:.1f} s, {stopped['faults.counter_read']} failed reads")
