"""The ``tcp { }`` config block."""

from __future__ import annotations

import attrs
from hostsflow.config import on_off, option


@attrs.define
class TcpConfig:
    """``tcp { udp = on|off }`` (hsflowd's mod_tcp keys; ``tunnel`` and ``dump`` are not
    implemented)."""

    udp: bool = option(
        False,
        help="also look up UDP sockets (socket uid/inode/cgroup for other modules, no 2209 record)",
        converter=on_off,
    )
