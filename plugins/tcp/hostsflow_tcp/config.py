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
        help="accepted for hsflowd configs; has no effect: UDP sockets have no tcp_info, and "
             "marking by service covers UDP without it",
        converter=on_off,
    )
