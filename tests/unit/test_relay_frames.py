"""The WebSocket relay's frame tracking (RFC 6455 5.2), without sockets."""

from __future__ import annotations

import os
import struct

import pytest

from rateguard.proxy.relay import FrameTracker, close_frame


def frame(opcode: int, payload: bytes, *, masked: bool) -> bytes:
    size = len(payload)
    if size < 126:
        head = bytes([0x80 | opcode, (0x80 if masked else 0) | size])
    elif size < 65536:
        head = bytes([0x80 | opcode, (0x80 if masked else 0) | 126]) + struct.pack("!H", size)
    else:
        head = bytes([0x80 | opcode, (0x80 if masked else 0) | 127]) + struct.pack("!Q", size)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("split", [1, 3, 7, 1000, 1 << 20])
def test_boundaries_and_close_code_across_any_split(masked, split):
    stream = (frame(0x1, b"hello", masked=masked) + frame(0x2, b"x" * 300, masked=masked)
              + frame(0x2, b"y" * 70000, masked=masked)
              + frame(0x8, struct.pack("!H", 4000) + b"done", masked=masked))
    tracker = FrameTracker()
    for at in range(0, len(stream), split):
        tracker.feed(stream[at:at + split])
    assert tracker.at_boundary and tracker.close_code == 4000


def test_mid_frame_is_not_a_boundary():
    tracker = FrameTracker()
    data = frame(0x2, b"z" * 1000, masked=True)
    tracker.feed(data[:500])
    assert not tracker.at_boundary
    tracker.feed(data[500:])
    assert tracker.at_boundary and tracker.close_code is None
    tracker.feed(data[:1])  # half a header
    assert not tracker.at_boundary


def test_close_frames_the_proxy_sends():
    tracker = FrameTracker()
    tracker.feed(close_frame(1001, masked=False))
    assert tracker.close_code == 1001 and tracker.at_boundary
    tracker = FrameTracker()
    tracker.feed(close_frame(1001, masked=True))
    assert tracker.close_code == 1001
    tracker = FrameTracker()
    tracker.feed(frame(0x8, b"", masked=False))
    assert tracker.close_code == 1005  # no status code in the frame
