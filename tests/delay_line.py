"""A user-space delay line: forwards every frame between two devices after a fixed delay.

    ip netns exec RELAY python3 delay_line.py DEV_A DEV_B DELAY_MS

Stands in for ``tc qdisc ... netem delay``: this machine's kernel is built without
CONFIG_NET_SCH_NETEM.  Frames keep their order (one FIFO per direction, constant delay).  The
devices must have checksum and segmentation offloads off (frames are copied as they are).
"""

from __future__ import annotations

import collections
import select
import socket
import sys
import time

ETH_P_ALL = 0x0003


def main(dev_a: str, dev_b: str, delay_ms: float) -> None:
    delay = delay_ms / 1000.0
    socks = {}
    for dev in (dev_a, dev_b):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.bind((dev, 0))
        s.setblocking(False)
        socks[dev] = s
    other = {socks[dev_a]: socks[dev_b], socks[dev_b]: socks[dev_a]}
    queue: collections.deque[tuple[float, socket.socket, bytes]] = collections.deque()
    poller = select.epoll()
    for s in socks.values():
        poller.register(s.fileno(), select.EPOLLIN)
    by_fd = {s.fileno(): s for s in socks.values()}
    while True:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else 1.0
        for fd, _ in poller.poll(timeout):
            s = by_fd[fd]
            while True:
                try:
                    frame, addr = s.recvfrom(65536)
                except BlockingIOError:
                    break
                if addr[2] == socket.PACKET_OUTGOING:
                    continue  # our own copy of a frame we sent
                queue.append((time.monotonic() + delay, other[s], frame))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, out, frame = queue.popleft()
            try:
                out.send(frame)
            except OSError:
                pass  # a full device queue drops, as a real link would


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
