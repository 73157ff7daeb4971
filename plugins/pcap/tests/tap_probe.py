"""Run a bare :class:`hostsflow_pcap.tap.Tap` in the current network namespace (a test helper,
started with ``ip netns exec NS python3 tap_probe.py DEV IFINDEX MAC RATE SNAPLEN [loopback]``;
MAC ``-`` for a device without one, ``loopback`` for a loopback device).

Prints ``ready`` once the tap is open, drains it until stdin is closed, then prints one JSON
object: per-sample (pool, drops, direction, input, output, frame_length, caplen, header hex
for the first few) and the tap's statistics.
"""

from __future__ import annotations

import json
import select
import sys

from hostsflow_pcap.tap import Tap


def _samples(tap: Tap) -> list:
    batch = tap.drain()
    return batch.flow_samples() if batch is not None else []


def main() -> None:
    dev, ifindex, mac, rate, snaplen = sys.argv[1:6]
    tap = Tap(dev, int(ifindex), None if mac == "-" else bytes.fromhex(mac.replace(":", "")),
              int(rate), snaplen=int(snaplen), loopback=sys.argv[6:7] == ["loopback"])
    print("ready", tap.counter_source, flush=True)
    samples = []
    while True:
        r, _, _ = select.select([tap.fileno(), sys.stdin], [], [], 0.5)
        if tap.fileno() in r:
            samples.extend(_samples(tap))
        if sys.stdin in r and not sys.stdin.readline():
            break
        tap.tick()
    samples.extend(_samples(tap))
    out = {
        "stats": tap.stats(),
        "samples": [
            [s.sample_pool, s.drops, s.direction, s.input, s.output, s.sampling_rate,
             s.records[0].frame_length, s.records[0].header.hex()]
            for s in samples
        ],
    }
    tap.close()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
