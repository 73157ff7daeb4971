"""Property tests for the one reader of outside input that had none: the systemd module's
ListUnits reply reader (D-Bus).  The NFLOG and ULOG message readers, the sock_diag reply reader
(hostsflow.sockets.diag, in the core), the config parser, the sFlow decoder
and the packet parser have theirs next to them.

Whatever arrives, the reader returns or refuses in its documented way, never raises anything
else, and well-formed input reads back exactly."""

from __future__ import annotations

import importlib.util

import pytest
from hypothesis import given
from hypothesis import strategies as st

if importlib.util.find_spec("hostsflow_systemd") is None:
    pytest.skip("needs the hostsflow-systemd module installed", allow_module_level=True)

from hostsflow_systemd.dbus import MalformedReply, parse_units

# ------------------------------------------------------------------ ListUnits replies

dbus_values = st.recursive(
    st.one_of(st.text(max_size=12), st.integers(-2**63, 2**64 - 1), st.booleans(), st.none(),
              st.binary(max_size=8), st.floats(allow_nan=True)),
    lambda inner: st.one_of(st.lists(inner, max_size=9), st.tuples(inner, inner),
                            st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=30,
)

unit_rows = st.tuples(
    st.text(max_size=20), st.text(max_size=10), st.sampled_from(["loaded", "not-found"]),
    st.sampled_from(["active", "inactive", "failed"]), st.text(max_size=8), st.text(max_size=8),
    st.text(min_size=1, max_size=20), st.integers(0, 2**32 - 1), st.text(max_size=5),
    st.text(max_size=5))


@given(dbus_values)
def test_list_units_any_shape_is_read_or_refused(body):
    try:
        out = parse_units(body)
    except MalformedReply:
        return
    assert all(len(row) == 4 and all(isinstance(x, str) for x in row) for row in out)


@given(st.lists(unit_rows, max_size=20))
def test_list_units_well_formed_reads_back(rows):
    assert parse_units((rows,)) == [(r[0], r[2], r[3], r[6]) for r in rows]
