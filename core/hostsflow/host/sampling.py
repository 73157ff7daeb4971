"""hsflowd's per-interface sampling-rate rule (``lookupPacketSamplingRate`` in hsflowconfig.c).

Used by the core as the fallback of the ``sflow_sampling_rate`` hook (capture modules such as
pcap ask ``agent.sampling_rate(interface)``; nflog/ulog use the global ``sampling`` instead).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

BPS_RATIO = "bps_ratio"
SPEED_SAMPLING_RATIO = 1_000_000  # default: one sample per this many bits per second of speed
SPEED_SAMPLING_MIN = 100
U32 = 0xFFFFFFFF


class _Adaptor(Protocol):
    up: bool
    speed: int


def format_speed(speed: int) -> str:
    """hsflowd's ``printSpeed``: the decimal digits with the last 12/9/6/3 replaced by T/G/M/K
    when there are more than that many (1000000000 -> ``1G``, 100000000 -> ``100M``,
    2500000000 -> ``2G``: the truncation is hsflowd's too)."""
    digits = str(int(speed))
    for chop, mult in ((12, "T"), (9, "G"), (6, "M"), (3, "K")):
        if len(digits) > chop:
            return digits[:-chop] + mult
    return digits


def lookup_setting(settings: Mapping[str, int], name: str) -> int | None:
    """Deepest-prefix match of ``name`` among dotted setting names (``sampling.<x>`` keys
    without the ``sampling.`` prefix): ``app.xyz`` applies to ``app.xyz.pqr`` unless
    ``app.xyz.pqr`` itself is set; matches end at a dot or at the end of ``name``.
    Case-sensitive, as hsflowd.  None when nothing matches."""
    best, best_len = None, 0
    for key, value in settings.items():
        n = len(key)
        if (best_len < n <= len(name) and name.startswith(key)
                and (n == len(name) or name[n] == ".")):  # fmt: skip
            best, best_len = value, n
    return best


def sampling_rate_for(
    interface: _Adaptor | None, sampling: int, sampling_by: Mapping[str, int] | None = None
) -> int:
    """The 1-in-N rate for an interface (0 = do not sample).

    1. interface admin-down -> 0;
    2. speed known: ``sampling.<format_speed(speed)>`` if set;
    3. else ``sampling.bps_ratio`` if set and > 0: speed / ratio, at least 1 (a ratio of 0
       falls back to the global rate);
    4. else speed / 1,000,000 with a floor of 100 (1G -> 1000, 10G -> 10000, 100M and 10M ->
       100);
    5. speed unknown (0), or no interface -> the global ``sampling``.
    """
    settings = sampling_by or {}
    if interface is None:
        return sampling
    if not interface.up:
        return 0
    speed = int(interface.speed or 0)
    if not speed:
        return sampling
    by_speed = lookup_setting(settings, format_speed(speed))
    if by_speed is not None:
        return by_speed
    ratio = lookup_setting(settings, BPS_RATIO)
    if ratio is not None:
        if ratio > 0:
            return max((speed // ratio) & U32, 1)
        return sampling
    return max((speed // SPEED_SAMPLING_RATIO) & U32, SPEED_SAMPLING_MIN)
