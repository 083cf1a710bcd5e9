from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from shardroute.errors import NoiseError, PeerIdMismatch, RemoteProtocolError
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.pb import noise_pb2
from shardroute.protocol.noise import HandshakeCompleted, NeedData, NoiseHandshake, NoiseTransport

# connection-stack.md §3.6
I_SEED = "7e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d"
MSG1 = "0020ce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59"
MSG2 = (
    "00c8ac01b2209e86354fb853237b5de0f4fab13c7fcbf433a61c019369617fecf10b"
    "b719b14d19eaf5ca91c89748c5ce8668e6864f05ee2367682b3e0c2fd086f0b4f64162733f3fe548251c518fe8c03c"
    "cea02da3639e594d5f9ebf80a01115fb8b7fff45a4fdb1dd7a777efeeba846adaf89d9c3938f267a02201f161ca887"
    "4f4d89d6a1162497695d8abd7600541594c3997a42a62b08b4d6aa4343798bd4ca35cfdbe26e9bf0ca02e7cf67b653"
    "459e7ada5edd25c3bec63b696aa878ab30edd21d12c8f59d4de028"
)
MSG3 = (
    "00a8539a5cf3ae8a0a9134b32bfa775a1522db3558a1351ed4101989b8b88aa6a6f0c1ae1ba3f47b4f"
    "1c6cb18ee51c01f9464d46bc2ab3b7c359826168d18cb22f46e9af3ae57bda0f722b1375e93de0549bb9a4e569affc"
    "4d7cc559724b3a604272b38ae31b22df675a2565830159142d0e68b8c34dd05e07136edfdee69836e55fa620190258"
    "82f76d92468849ddd15b23bbae179fc2043e18d06b74f38d5786356b6ba2eb3eaa8d64"
)


def x25519(byte: int) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes([byte]) * 32)


def vector_pair() -> tuple[NoiseHandshake, NoiseHandshake]:
    initiator = NoiseHandshake(
        initiator=True,
        identity=Ed25519PrivateKey.from_seed(bytes.fromhex(I_SEED)),
        static_key=x25519(1),
        ephemeral_key=x25519(2),
    )
    responder = NoiseHandshake(
        initiator=False,
        identity=Ed25519PrivateKey.from_seed(bytes([0x11]) * 32),
        static_key=x25519(3),
        ephemeral_key=x25519(4),
    )
    return initiator, responder


def run(
    initiator: NoiseHandshake, responder: NoiseHandshake
) -> tuple[HandshakeCompleted, HandshakeCompleted]:
    responder.receive_data(initiator.data_to_send())
    assert isinstance(responder.next_event(), NeedData)
    initiator.receive_data(responder.data_to_send())
    done_i = initiator.next_event()
    responder.receive_data(initiator.data_to_send())
    done_r = responder.next_event()
    assert isinstance(done_i, HandshakeCompleted) and isinstance(done_r, HandshakeCompleted)
    return done_i, done_r


def test_reproduces_the_digest_transcript_byte_for_byte() -> None:
    initiator, responder = vector_pair()
    m1 = initiator.data_to_send()
    assert m1.hex() == MSG1
    responder.receive_data(m1)
    responder.next_event()
    m2 = responder.data_to_send()
    assert m2.hex() == MSG2
    initiator.receive_data(m2)
    done_i = initiator.next_event()
    m3 = initiator.data_to_send()
    assert m3.hex() == MSG3
    responder.receive_data(m3)
    done_r = responder.next_event()
    assert isinstance(done_i, HandshakeCompleted) and isinstance(done_r, HandshakeCompleted)
    assert (
        initiator.handshake_hash.hex()
        == "2180f23ada911c530abed65fc4483b40c3a740ff7bd84e6872bb9b1988e02a32"
    )
    assert str(done_i.remote_peer) == "12D3KooWPqT2nMDSiXUSx5D7fasaxhxKigVhcqfkKqrLghCq9jxz"
    assert str(done_r.remote_peer) == "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq"
    first_i = done_i.transport.encrypt(b"/multistream/1.0.0\n")
    assert (
        first_i.hex()
        == "0023b2c0e4ccb512dffe01480638103ce489a49efef915d23fd0ddecf396508fe98bce8aaa"
    )
    assert done_r.transport.encrypt(b"abc").hex() == "0013f9991a8fefc79e3947f51fa0d165918d657454"
    done_r.transport.receive_data(first_i)
    assert done_r.transport.decrypt_available() == b"/multistream/1.0.0\n"


def fresh(initiator: bool, expected: PeerId | None = None) -> NoiseHandshake:
    return NoiseHandshake(
        initiator=initiator, identity=Ed25519PrivateKey.generate(), expected_peer=expected
    )


def test_large_messages_are_split_into_frames_and_reassembled_from_any_chunking() -> None:
    done_i, done_r = run(fresh(True), fresh(False))
    payload = bytes(range(256)) * 1000  # 256 000 bytes: four full frames and a rest
    wire = done_i.transport.encrypt(payload)
    assert len(wire) == len(payload) + 4 * (2 + 16)
    out = bytearray()
    for i in range(0, len(wire), 7777):
        done_r.transport.receive_data(wire[i : i + 7777])
        out += done_r.transport.decrypt_available()
    assert out == payload


def test_dialer_refuses_an_unexpected_peer() -> None:
    stranger = PeerId.from_public_key(Ed25519PrivateKey.generate().public_key)
    initiator, responder = fresh(True, expected=stranger), fresh(False)
    responder.receive_data(initiator.data_to_send())
    responder.next_event()
    initiator.receive_data(responder.data_to_send())
    with pytest.raises(PeerIdMismatch) as info:
        initiator.next_event()
    assert str(stranger) in str(info.value)


def test_tampered_transport_frame_fails_authentication() -> None:
    done_i, done_r = run(fresh(True), fresh(False))
    wire = bytearray(done_i.transport.encrypt(b"hello"))
    wire[5] ^= 1
    done_r.transport.receive_data(bytes(wire))
    with pytest.raises(NoiseError):
        done_r.transport.decrypt_available()


def test_signature_over_the_wrong_static_key_is_refused() -> None:
    class Liar(NoiseHandshake):
        def _payload(self) -> bytes:  # signs a different static key
            payload = noise_pb2.NoiseHandshakePayload()
            payload.identity_key = self._identity.public_key.to_protobuf()
            payload.identity_sig = self._identity.sign(b"noise-libp2p-static-key:" + bytes(32))
            return payload.SerializeToString()

    initiator = fresh(True)
    responder = Liar(initiator=False, identity=Ed25519PrivateKey.generate())
    responder.receive_data(initiator.data_to_send())
    responder.next_event()
    initiator.receive_data(responder.data_to_send())
    with pytest.raises(NoiseError, match="signature"):
        initiator.next_event()


def test_bytes_after_the_last_handshake_message_are_kept() -> None:
    initiator, responder = fresh(True), fresh(False)
    responder.receive_data(initiator.data_to_send())
    responder.next_event()
    initiator.receive_data(responder.data_to_send())
    done_i = initiator.next_event()
    assert isinstance(done_i, HandshakeCompleted)
    early = done_i.transport.encrypt(b"early data")
    responder.receive_data(initiator.data_to_send() + early)
    done_r = responder.next_event()
    assert isinstance(done_r, HandshakeCompleted)
    done_r.transport.receive_data(done_r.remaining)
    assert done_r.transport.decrypt_available() == b"early data"


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=400), st.booleans())
def test_handshake_fuzz(data: bytes, as_initiator: bool) -> None:
    core = fresh(as_initiator)
    core.data_to_send()
    core.receive_data(data)
    try:
        core.next_event()
    except RemoteProtocolError:
        pass


@settings(deadline=None)
@given(st.binary(max_size=300))
def test_transport_fuzz(data: bytes) -> None:
    transport = NoiseTransport(bytes(32), bytes(32))
    transport.receive_data(data)
    try:
        transport.decrypt_available()
    except RemoteProtocolError:
        pass
