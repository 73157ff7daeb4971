"""The extended_user flow record (sFlow v5, enterprise 0, format 1004).

sFlow v5 spec::

    /* opaque = flow_data; enterprise = 0; format = 1004 */
    struct extended_user {
       charset src_charset;  /* MIBEnum of the character set of src_user, 0 = unknown */
       opaque src_user<>;    /* user associated with the packet's source */
       charset dst_charset;
       opaque dst_user<>;    /* user associated with the packet's destination */
    }

``charset`` is an unsigned int (IANA MIBenum: 106 = UTF-8).  An XDR ``opaque<>`` and a
``string<>`` have the same wire form (length word, bytes, zero padding), so the user names are
declared with the ``string`` helper, which encodes UTF-8.
"""

from __future__ import annotations

from hostsflow.sflow.records import Record, flow_record
from hostsflow.sflow.xdr import string, u32

CHARSET_UNKNOWN = 0
CHARSET_UTF8 = 106  #: IANA MIBenum of UTF-8
MAX_USER = 255  #: longer names are cut (hsflowd's limit for user names)


@flow_record(1004)
class ExtendedUser(Record):
    """extended_user: the local users that own the packet's source and destination sockets.

    An empty user with charset 0 means "not known" for that side."""

    src_charset: int = u32(CHARSET_UNKNOWN, "MIBenum of src_user's charset (106 UTF-8, 0 none)")
    src_user: str = string(MAX_USER, "user owning the packet's source socket")
    dst_charset: int = u32(CHARSET_UNKNOWN, "MIBenum of dst_user's charset (106 UTF-8, 0 none)")
    dst_user: str = string(MAX_USER, "user owning the packet's destination socket")
