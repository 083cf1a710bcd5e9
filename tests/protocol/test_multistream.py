from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardroute.errors import LocalProtocolError, MultistreamError, RemoteProtocolError
from shardroute.protocol.multistream import (
    MultistreamInitiator,
    MultistreamResponder,
    NeedData,
    ProtocolAgreed,
    ProtocolRejected,
    encode_line,
)

HEADER = bytes.fromhex("132f6d756c746973747265616d2f312e302e300a")
TLS = bytes.fromhex("0b2f746c732f312e302e300a")
NA = bytes.fromhex("036e610a")
NOISE = bytes.fromhex("072f6e6f6973650a")


def test_known_encodings() -> None:
    assert encode_line("/multistream/1.0.0") == HEADER
    assert encode_line("/yamux/1.0.0").hex() == "0d2f79616d75782f312e302e300a"
    assert encode_line("/icn/kad/1.0.0").hex() == "0f2f69636e2f6b61642f312e302e300a"
    assert encode_line("/ipfs/id/push/1.0.0").hex() == "142f697066732f69642f707573682f312e302e300a"


def test_go_proposes_tls_first_and_we_answer_na_then_noise() -> None:
    """The digest's worked bytes: a go dialer's security negotiation."""
    responder = MultistreamResponder(["/noise"])
    assert responder.data_to_send() == HEADER
    responder.receive_data(HEADER + TLS)
    assert isinstance(responder.next_event(), NeedData)
    assert responder.data_to_send() == NA
    responder.receive_data(NOISE + b"\x00\x20noise msg1...")
    event = responder.next_event()
    assert event == ProtocolAgreed(protocol="/noise", remaining=b"\x00\x20noise msg1...")
    assert responder.data_to_send() == NOISE


def test_initiator_pipelines_header_and_first_proposal_and_falls_back() -> None:
    initiator = MultistreamInitiator(["/tls/1.0.0", "/noise"])
    assert initiator.data_to_send() == HEADER + TLS
    initiator.receive_data(HEADER + NA)
    assert isinstance(initiator.next_event(), NeedData)
    assert initiator.data_to_send() == NOISE
    initiator.receive_data(NOISE + b"early")
    assert initiator.next_event() == ProtocolAgreed(protocol="/noise", remaining=b"early")


def test_all_refused_is_rejected() -> None:
    initiator = MultistreamInitiator(["/a"])
    initiator.data_to_send()
    initiator.receive_data(HEADER + NA)
    assert isinstance(initiator.next_event(), ProtocolRejected)


def test_pair_in_memory_with_pipelined_application_bytes() -> None:
    initiator = MultistreamInitiator(["/x/1", "/kad/1"])
    responder = MultistreamResponder(["/kad/1"])
    responder.receive_data(initiator.data_to_send())
    responder.next_event()
    initiator.receive_data(responder.data_to_send())
    initiator.next_event()
    responder.receive_data(initiator.data_to_send() + b"request")
    assert responder.next_event() == ProtocolAgreed(protocol="/kad/1", remaining=b"request")
    initiator.receive_data(responder.data_to_send())
    assert initiator.next_event() == ProtocolAgreed(protocol="/kad/1", remaining=b"")


def test_ls_lists_protocols() -> None:
    responder = MultistreamResponder(["/a", "/b"])
    responder.data_to_send()
    responder.receive_data(HEADER + encode_line("ls"))
    assert isinstance(responder.next_event(), NeedData)
    expected_inner = encode_line("/a") + encode_line("/b") + b"\n"
    assert responder.data_to_send() == bytes([len(expected_inner)]) + expected_inner


@pytest.mark.parametrize(
    "data",
    [
        b"\x13/multistream/1.0.0X",  # no newline
        b"\x85\x08" + b"a" * 1100,  # over 1024 bytes, refused from its length
        encode_line("/multistream/2.0.0"),
    ],
)
def test_framing_faults_are_remote_errors(data: bytes) -> None:
    responder = MultistreamResponder(["/a"])
    responder.receive_data(data)
    with pytest.raises(MultistreamError):
        responder.next_event()


def test_proposal_flood_is_cut_off() -> None:
    responder = MultistreamResponder(["/a"], max_proposals=3)
    responder.receive_data(HEADER + b"".join(encode_line(f"/p{i}") for i in range(5)))
    with pytest.raises(MultistreamError):
        responder.next_event()


def test_using_a_finished_negotiation_is_a_local_error() -> None:
    initiator = MultistreamInitiator(["/a"])
    initiator.receive_data(HEADER + encode_line("/a"))
    initiator.next_event()
    with pytest.raises(LocalProtocolError):
        initiator.receive_data(b"x")


@given(st.binary(max_size=3000))
def test_responder_fuzz(data: bytes) -> None:
    responder = MultistreamResponder(["/noise"])
    responder.receive_data(data)
    try:
        responder.next_event()
    except RemoteProtocolError:
        pass


@given(st.lists(st.binary(max_size=40), max_size=8), st.data())
def test_initiator_fuzz_with_mutated_valid_answers(
    chunks: list[bytes], data: st.DataObject
) -> None:
    answer = bytearray(HEADER + NA + NOISE)
    for _ in range(data.draw(st.integers(0, 3))):
        answer[data.draw(st.integers(0, len(answer) - 1))] = data.draw(st.integers(0, 255))
    initiator = MultistreamInitiator(["/tls/1.0.0", "/noise"])
    try:
        for piece in [bytes(answer), *chunks]:
            initiator.receive_data(piece)
            if not isinstance(initiator.next_event(), NeedData):
                break
    except RemoteProtocolError:
        pass
