"""The ``user { ... }`` config block."""

from __future__ import annotations

import attrs

from hostsflow.config import on_off, option


@attrs.frozen
class UserConfig:
    """Settings of the user module (all optional: ``user { }`` enables it with defaults)."""

    numeric: bool = option(
        False, converter=on_off,
        help="send the numeric uid (as decimal text) instead of the user name",
    )
