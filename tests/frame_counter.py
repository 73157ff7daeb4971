"""The truth on the wire for end-to-end tests: every frame on one device counted by its own
AF_PACKET socket, as the agent reports it (frame length + 4 for the FCS).  A veth shows each
frame once, whichever way it goes."""

from __future__ import annotations

import socket
import struct
import threading
import time


class FrameCounter:
    """Counts the frames on ``dev`` to or from some TCP/UDP ports (IPv4), bytes as the agent
    reports them (frame + 4-byte FCS), in all (``bytes``, ``frames``) and per wall-clock second
    (``per_second[name][second]``: bytes), while ``counting`` is set."""

    def __init__(self, dev: str, ports: dict[int, str]) -> None:
        self.ports = ports
        self.bytes = {name: 0 for name in ports.values()}
        self.frames = {name: 0 for name in ports.values()}
        self.per_second: dict[str, dict[int, int]] = {name: {} for name in ports.values()}
        self.counting = False
        self.s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.s.bind((dev, 0))
        self.s.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = bytearray(128)
        data = memoryview(buf)
        while not self._stop.is_set():
            try:  # the headers only; MSG_TRUNC gives the frame's whole length
                length = self.s.recv_into(buf, 0, socket.MSG_TRUNC)
            except (TimeoutError, OSError):
                continue
            if not self.counting or length < 38:
                continue
            if struct.unpack_from("!H", data, 12)[0] != 0x0800 or data[23] not in (6, 17):
                continue
            ihl = (data[14] & 15) * 4
            sport, dport = struct.unpack_from("!HH", data, 14 + ihl)
            name = self.ports.get(dport) or self.ports.get(sport)
            if name is not None:
                self.bytes[name] += length + 4
                self.frames[name] += 1
                second = int(time.time())
                per = self.per_second[name]
                per[second] = per.get(second, 0) + length + 4

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.s.close()

    def rate(self, name: str, start: int, end: int) -> float:
        """Bytes a second of ``name`` over the whole seconds ``start`` to ``end`` (excluded)."""
        per = self.per_second[name]
        return sum(per.get(s, 0) for s in range(start, end)) / max(1, end - start)
