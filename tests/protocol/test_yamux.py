from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from shardroute.errors import (
    LocalProtocolError,
    RemoteProtocolError,
    ResourceLimitExceeded,
    YamuxError,
)
from shardroute.limits import YAMUX_INITIAL_WINDOW
from shardroute.protocol.yamux import (
    DataReceived,
    GoAwayReceived,
    PingAcknowledged,
    StreamClosed,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowUpdated,
    YamuxSession,
)
from shardroute.protocol.yamux.frames import Flag, FrameType, pack_header, unpack_header


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def pair() -> tuple[YamuxSession, YamuxSession]:
    return YamuxSession(is_client=True), YamuxSession(is_client=False)


def transfer(a: YamuxSession, b: YamuxSession) -> tuple[list[object], list[object]]:
    """Move bytes both ways until quiet; returns (events at a, events at b)."""
    at_a: list[object] = []
    at_b: list[object] = []
    while True:
        to_b, to_a = a.data_to_send(), b.data_to_send()
        if not to_b and not to_a:
            return at_a, at_b
        at_b += b.receive_data(to_b) if to_b else []
        at_a += a.receive_data(to_a) if to_a else []


def test_header_vectors() -> None:
    assert pack_header(FrameType.WINDOW_UPDATE, Flag.SYN, 1, 0) == h("00 01 0001 00000001 00000000")
    assert pack_header(FrameType.DATA, Flag.NONE, 1, 0x22) == h("00 00 0000 00000001 00000022")
    assert pack_header(FrameType.WINDOW_UPDATE, Flag.NONE, 3, 262144) == h(
        "00 01 0000 00000003 00040000"
    )
    header = unpack_header(h("00 02 0001 00000000 00000007"))
    assert (header.type, header.flags, header.length) == (FrameType.PING, Flag.SYN, 7)


def test_open_send_half_close_both_ways() -> None:
    client, server = pair()
    sid = client.open_stream()
    syn = client.data_to_send()
    assert sid == 1 and syn == h("00 01 0001 00000001 00000000")
    client.open_stream()  # 3
    assert client.send_data(sid, b"hello") == 5
    events = server.receive_data(syn + client.data_to_send())
    assert StreamOpened(stream_id=1) in events and StreamOpened(stream_id=3) in events
    assert DataReceived(stream_id=1, data=b"hello") in events
    assert server.data_to_send().startswith(h("00 01 0002 00000001 00000000"))  # ACK
    server.send_data(1, b"world")
    server.close_stream(1)
    at_client, _ = transfer(client, server)
    assert (
        DataReceived(stream_id=1, data=b"world") in at_client
        and StreamEnded(stream_id=1) in at_client
    )
    client.close_stream(1)
    _, at_server = transfer(client, server)
    assert at_server == [StreamEnded(stream_id=1), StreamClosed(stream_id=1)]
    assert not server.has_stream(1) and not client.has_stream(1)


def test_flow_control_stops_at_the_window_and_resumes_after_acknowledgement() -> None:
    client, server = pair()
    sid = client.open_stream()
    assert client.send_data(sid, b"x" * (YAMUX_INITIAL_WINDOW + 1000)) == YAMUX_INITIAL_WINDOW
    assert client.send_data(sid, b"more") == 0
    _, at_server = transfer(client, server)
    received = sum(len(e.data) for e in at_server if isinstance(e, DataReceived))
    assert received == YAMUX_INITIAL_WINDOW
    server.acknowledge_received(sid, YAMUX_INITIAL_WINDOW // 2 - 1)
    assert server.data_to_send() == b""  # below half the window: no update yet
    server.acknowledge_received(sid, 1)
    update = server.data_to_send()
    assert update == pack_header(FrameType.WINDOW_UPDATE, Flag.NONE, sid, YAMUX_INITIAL_WINDOW // 2)
    events = client.receive_data(update)
    assert events == [WindowUpdated(stream_id=sid, window=YAMUX_INITIAL_WINDOW // 2)]
    assert client.send_window(sid) == YAMUX_INITIAL_WINDOW // 2


def test_sending_past_the_window_is_a_protocol_error_with_goaway() -> None:
    client, server = pair()
    sid = client.open_stream()
    server.receive_data(client.data_to_send())
    server.data_to_send()
    frame = pack_header(FrameType.DATA, Flag.NONE, sid, YAMUX_INITIAL_WINDOW + 1) + bytes(
        YAMUX_INITIAL_WINDOW + 1
    )
    with pytest.raises(YamuxError) as info:
        server.receive_data(frame)
    assert info.value.code == 1
    assert server.data_to_send() == pack_header(FrameType.GO_AWAY, Flag.NONE, 0, 1)


@pytest.mark.parametrize(
    "frame",
    [
        h("01 00 0000 00000001 00000000"),  # version 1
        h("00 04 0000 00000001 00000000"),  # type 4
        h("00 01 0001 00000002 00000000"),  # client opening an even stream
        h("00 00 0000 00000000 00000000"),  # data on stream 0
    ],
)
def test_protocol_errors(frame: bytes) -> None:
    server = YamuxSession(is_client=False)
    with pytest.raises(YamuxError):
        server.receive_data(frame)
    assert server.data_to_send()[1] == FrameType.GO_AWAY


def test_duplicate_syn_is_an_error_and_unknown_streams_are_ignored() -> None:
    server = YamuxSession(is_client=False)
    assert server.receive_data(h("00 00 0000 00000009 00000003") + b"abc") == []  # unknown, skipped
    server.receive_data(h("00 01 0001 00000001 00000000"))
    with pytest.raises(YamuxError):
        server.receive_data(h("00 01 0001 00000001 00000000"))


def test_reset_ping_and_goaway() -> None:
    client, server = pair()
    sid = client.open_stream()
    transfer(client, server)
    server.reset_stream(sid)
    at_client, _ = transfer(client, server)
    assert at_client == [StreamReset(stream_id=sid)]
    with pytest.raises(LocalProtocolError):
        client.send_data(sid, b"x")
    opaque = client.send_ping()
    at_client, _ = transfer(client, server)
    assert at_client == [PingAcknowledged(opaque=opaque)]
    server.go_away()
    at_client, _ = transfer(client, server)
    assert at_client == [GoAwayReceived(code=0)]
    with pytest.raises(LocalProtocolError):
        client.open_stream()


def test_inbound_streams_over_the_cap_are_reset_alone() -> None:
    client = YamuxSession(is_client=True)
    server = YamuxSession(is_client=False, max_streams=2)
    for _ in range(3):
        client.open_stream()
    _, at_server = transfer(client, server)
    assert [e for e in at_server if isinstance(e, StreamOpened)] == [
        StreamOpened(stream_id=1),
        StreamOpened(stream_id=3),
    ]
    assert not client.has_stream(5)  # the RST reached the opener
    assert client.has_stream(1)


def test_outbound_cap() -> None:
    client = YamuxSession(is_client=True, max_streams=1)
    client.open_stream()
    with pytest.raises(ResourceLimitExceeded):
        client.open_stream()


@settings(deadline=None)
@given(st.binary(max_size=500))
def test_random_bytes_give_events_or_yamux_errors(data: bytes) -> None:
    session = YamuxSession(is_client=False)
    try:
        session.receive_data(data)
    except RemoteProtocolError:
        pass


@settings(deadline=None)
@given(st.data())
def test_mutated_valid_traffic(data: st.DataObject) -> None:
    client, server = pair()
    sid = client.open_stream()
    client.send_data(sid, b"payload" * 50)
    client.close_stream(sid)
    wire = bytearray(client.data_to_send())
    for _ in range(data.draw(st.integers(1, 4))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    try:
        server.receive_data(bytes(wire))
    except RemoteProtocolError:
        pass


class PairMachine(RuleBasedStateMachine):
    """Random operations on a connected pair: bytes arrive in order, windows stay sane."""

    def __init__(self) -> None:
        super().__init__()
        self.client, self.server = pair()
        self.sent: dict[int, bytearray] = {}
        self.got: dict[int, bytearray] = {}

    @rule()
    def open(self) -> None:
        if len(self.sent) < 5:
            self.sent[self.client.open_stream()] = bytearray()

    @rule(size=st.integers(0, 200_000), pick=st.integers(0, 10))
    def send(self, size: int, pick: int) -> None:
        if self.sent:
            sid = sorted(self.sent)[pick % len(self.sent)]
            if self.client.has_stream(sid):
                chunk = bytes([sid % 251]) * size
                taken = self.client.send_data(sid, chunk)
                self.sent[sid] += chunk[:taken]

    @rule()
    def deliver(self) -> None:
        _, at_server = transfer(self.client, self.server)
        for event in at_server:
            if isinstance(event, DataReceived):
                self.got.setdefault(event.stream_id, bytearray()).extend(event.data)
                self.server.acknowledge_received(event.stream_id, len(event.data))

    @invariant()
    def consistent(self) -> None:
        for sid, data in self.got.items():
            assert self.sent[sid].startswith(data)
        for sid in self.sent:
            if self.client.has_stream(sid):
                assert self.client.send_window(sid) >= 0


TestPairMachine = PairMachine.TestCase
TestPairMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
