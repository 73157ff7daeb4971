"""The sampling program: its instructions, and that the kernel accepts (and refuses) programs."""

from __future__ import annotations

import socket
import struct

import pytest
from hostsflow_pcap.bpf import (
    LD_RANDOM,
    attach_filter,
    drop_all_program,
    pack_program,
    sampling_program,
)


def test_one_in_n_program_is_the_five_instructions() -> None:
    prog = sampling_program(400, 128)
    assert prog == [
        LD_RANDOM,
        (0x94, 0, 0, 400),
        (0x15, 0, 1, 0),
        (0x06, 0, 0, 128),
        (0x06, 0, 0, 0),
    ]
    assert LD_RANDOM == (0x20, 0, 0, 0xFFFFF038)  # SKF_AD_OFF + SKF_AD_RANDOM


def test_rate_one_keeps_everything_cut_to_snaplen() -> None:
    assert sampling_program(1, 200) == [(0x06, 0, 0, 200)]


@pytest.mark.parametrize("bad", [0, -1, 2**32])
def test_rates_out_of_range_are_refused(bad: int) -> None:
    with pytest.raises(ValueError):
        sampling_program(bad, 128)


def test_packing_is_struct_sock_filter() -> None:
    raw = pack_program(sampling_program(10, 128))
    assert len(raw) == 5 * 8
    assert struct.unpack_from("=HBBI", raw, 8) == (0x94, 0, 0, 10)


def test_kernel_accepts_sampling_and_drop_programs() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        attach_filter(s.fileno(), sampling_program(100, 128))
        attach_filter(s.fileno(), sampling_program(7, 64))  # replacing works
        attach_filter(s.fileno(), drop_all_program())


def test_kernel_refuses_a_broken_program() -> None:
    # jump past the end of the program: the kernel's checker must refuse it
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError):
        attach_filter(s.fileno(), [(0x15, 5, 5, 0), (0x06, 0, 0, 0)])


def test_attached_program_samples_loopback_datagrams() -> None:
    """The program really runs: 1-in-1 delivers datagrams, drop-all delivers none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(0.2)
        attach_filter(rx.fileno(), drop_all_program())
        tx.sendto(b"dropped", rx.getsockname())
        with pytest.raises(TimeoutError):
            rx.recv(100)
        attach_filter(rx.fileno(), sampling_program(1, 0xFFFF))
        tx.sendto(b"kept", rx.getsockname())
        assert rx.recv(100) == b"kept"
