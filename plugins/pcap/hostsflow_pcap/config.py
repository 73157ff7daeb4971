"""The ``pcap { }`` block (repeatable): which devices to tap and how (as hsflowd's mod_pcap).

Selection, per block: ``dev`` names one device; ``dev.pattern`` keeps devices whose name the
regular expression matches in full; ``speed`` keeps devices whose speed is in the range.  A
device matched only by pattern or speed must be a physical NIC, a bridge or an "other" device
(veth, VLAN, bond and loopback are skipped as hsflowd does); a device named with ``dev`` is
tapped whatever its kind.  The first block that matches a device wins.
"""

from __future__ import annotations

import re

import attrs
from hostsflow.config import SpeedRange, device, integer, on_off, option, regex, speed_range, u32

#: device kinds tapped when the device is not named explicitly (hsflowd's rule)
AUTO_KINDS = frozenset({"physical", "bridge", "other"})



@attrs.define(slots=True)
class PcapConfig:
    """One ``pcap { }`` block."""

    dev: str | None = option(None, help="device to tap", converter=device)
    dev_pattern: re.Pattern[str] | None = option(
        None, key="dev.pattern", help="tap every device whose name matches this regex",
        converter=regex,
    )
    speed: SpeedRange | None = option(
        None, help="tap only devices whose speed is in this range (1G-10G, 1G-, 100M)",
        converter=speed_range,
    )
    promisc: bool = option(False, help="put the device in promiscuous mode", converter=on_off)
    sampling: int | None = option(
        None, help="1-in-N sampling rate for this tap (default: the agent's rule per speed)",
        converter=u32(),
    )
    buffer: int | None = option(
        None, help="capture ring size in bytes; holds sampled headers during stalls "
        "(default: 4 MB when sampling 1 in fewer than 10, else 1 MB)",
        converter=integer(64 * 1024, 1 << 30),
    )

    def selects(self, name: str, kind: str, speed: int) -> bool:
        """Whether this block asks for a tap on a device with this name, kind and speed."""
        if self.dev is not None and name != self.dev:
            return False
        if self.dev_pattern is not None and not self.dev_pattern.fullmatch(name):
            return False
        if self.speed is not None and not self.speed.contains(speed):
            return False
        if self.dev is None and kind not in AUTO_KINDS:
            return False
        return True
