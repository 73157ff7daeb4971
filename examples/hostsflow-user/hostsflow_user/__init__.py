"""hostsflow-user: adds extended_user (sFlow flow record 0:1004) to sampled packets whose socket
belongs to a local user.  An example of a third-party hostsflow module; see README.md."""

from .config import UserConfig
from .module import UserModule
from .record import CHARSET_UTF8, ExtendedUser

__all__ = ["CHARSET_UTF8", "ExtendedUser", "UserConfig", "UserModule"]
