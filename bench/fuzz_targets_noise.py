"""Fuzz harnesses for the Noise secure channel: the XX handshake and the transport frames."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bench.fuzz_fixtures import (
    ID_I,
    ID_R,
    PEER_R,
    _chunks,
    _fail,
    _layout,
    _other_identities,
    _seed,
)
from shardroute.errors import NoiseError
from shardroute.identity.peer_id import PeerId
from shardroute.limits import NOISE_MAX_PLAINTEXT
from shardroute.pb import noise_pb2
from shardroute.protocol.events import NeedData
from shardroute.protocol.noise.handshake import SIGNATURE_PREFIX, HandshakeCompleted, NoiseHandshake
from shardroute.protocol.noise.transport import NoiseTransport


def _x25519(byte: int) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes([byte]) * 32)


# ------------------------------------------------------------------------------ noise handshake
class _FuzzedPayload(NoiseHandshake):
    """A peer that runs the handshake honestly but sends `payload` as its libp2p payload."""

    def __init__(self, payload: bytes, *, initiator: bool) -> None:
        self.fuzz_payload = payload
        keys = (ID_I, 1, 2) if initiator else (ID_R, 3, 4)
        super().__init__(
            initiator=initiator,
            identity=keys[0],
            static_key=_x25519(keys[1]),
            ephemeral_key=_x25519(keys[2]),
        )

    def _payload(self) -> bytes:
        return self.fuzz_payload


def _initiator(expected_peer: PeerId | None = None) -> NoiseHandshake:
    return NoiseHandshake(
        initiator=True,
        identity=ID_I,
        expected_peer=expected_peer,
        static_key=_x25519(1),
        ephemeral_key=_x25519(2),
    )


def _responder() -> NoiseHandshake:
    return NoiseHandshake(
        initiator=False, identity=ID_R, static_key=_x25519(3), ephemeral_key=_x25519(4)
    )


def _feed(hs: NoiseHandshake, body: bytes, size: int) -> HandshakeCompleted | None:
    """Feed `body` in chunks; None when the handshake still needs data."""
    for chunk in _chunks(body, size):
        hs.receive_data(chunk)
        event = hs.next_event()
        if isinstance(event, HandshakeCompleted):
            return event
        if not isinstance(event, NeedData):
            _fail(f"unexpected handshake event {event!r}")
    return None


def _check_completed(a: HandshakeCompleted, b: HandshakeCompleted) -> None:
    """Two completed ends must talk: each decrypts what the other encrypts."""
    a.transport.receive_data(b.transport.encrypt(b"ping"))
    b.transport.receive_data(a.transport.encrypt(b"pong"))
    if a.transport.decrypt_available() != b"ping" or b.transport.decrypt_available() != b"pong":
        _fail("completed handshakes derived keys that do not match")


def fuzz_noise_handshake(data: bytes) -> None:
    mode, size, body = _layout(data)
    mode %= 6
    body = body[:60_000]  # a Noise message is at most 65535 bytes; the fuzzed peer must send one
    try:
        if mode == 0:  # responder, arbitrary msg1 and after
            _feed(_responder(), body, size)
        elif mode == 1:  # initiator after its msg1, arbitrary msg2
            _feed(_initiator(), body, size)
        elif mode == 2:  # responder after a real msg1, arbitrary msg3
            responder = _responder()
            responder.receive_data(_initiator().data_to_send())
            if not isinstance(responder.next_event(), NeedData):
                _fail("responder finished on msg1")
            responder.data_to_send()
            _feed(responder, body, size)
        elif mode in (3, 4):  # a well-encrypted msg2 (3) or msg3 (4) carrying a fuzzed payload
            if mode == 3:
                initiator = _initiator(expected_peer=PEER_R if size & 1 else None)
                responder = _FuzzedPayload(body, initiator=False)
            else:
                initiator, responder = _FuzzedPayload(body, initiator=True), _responder()
            responder.receive_data(initiator.data_to_send())
            responder.next_event()
            initiator.receive_data(responder.data_to_send())
            done_i = initiator.next_event()
            if not isinstance(done_i, HandshakeCompleted):
                _fail("initiator did not finish on a well-formed msg2")
                return
            responder.receive_data(initiator.data_to_send())
            done_r = responder.next_event()
            if not isinstance(done_r, HandshakeCompleted):
                _fail("responder did not finish on a well-formed msg3")
                return
            _check_completed(done_i, done_r)
        else:  # an honest handshake with arbitrary bytes after msg3
            initiator, responder = _initiator(), _responder()
            responder.receive_data(initiator.data_to_send())
            responder.next_event()
            initiator.receive_data(responder.data_to_send())
            done_i = initiator.next_event()
            if not isinstance(done_i, HandshakeCompleted):
                _fail("honest handshake failed")
                return
            responder.receive_data(initiator.data_to_send() + body)
            done_r = responder.next_event()
            if not isinstance(done_r, HandshakeCompleted) or done_r.remaining != body:
                _fail("bytes after msg3 were not handed over whole")
                return
            done_r.transport.receive_data(done_r.remaining)
            done_r.transport.decrypt_available()
    except NoiseError:
        return


def seeds_noise_handshake() -> list[bytes]:
    initiator, responder = _initiator(), _responder()
    msg1 = initiator.data_to_send()
    responder.receive_data(msg1)
    responder.next_event()
    msg2 = responder.data_to_send()
    initiator.receive_data(msg2)
    initiator.next_event()
    msg3 = initiator.data_to_send()
    out = [_seed(0, 0, msg1), _seed(0, 7, msg1 + msg3), _seed(1, 0, msg2), _seed(1, 9, msg2)]
    out += [_seed(2, 0, msg3), _seed(2, 33, msg3)]
    # Real payloads, signed over the fixed static keys, for the fuzzed-payload modes.
    out += [_seed(3, 0, responder._payload()), _seed(3, 1, responder._payload())]
    out.append(_seed(4, 0, initiator._payload()))
    for key_pb, sign in _other_identities():
        for mode, static in ((3, _x25519(3)), (4, _x25519(1))):
            payload = noise_pb2.NoiseHandshakePayload()
            payload.identity_key = key_pb
            static_pub = static.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            payload.identity_sig = sign(SIGNATURE_PREFIX + static_pub)
            out.append(_seed(mode, 0, payload.SerializeToString()))
    transport = NoiseTransport(bytes(32), bytes(32))
    out += [_seed(5, 0, b""), _seed(5, 0, transport.encrypt(b"hello"))]
    return out


# ------------------------------------------------------------------------------ noise transport
def fuzz_noise_transport(data: bytes) -> None:
    """A sender and a receiver with one key; ops from the input encrypt, deliver, corrupt or
    inject. What the receiver decrypts is always a prefix of what was sent, and all of it when
    the wire was left alone."""
    key = bytes(range(32))
    sender, receiver = NoiseTransport(key, bytes(32)), NoiseTransport(bytes(32), key)
    mode, _, body = _layout(data)
    if mode & 1:  # arbitrary bytes straight into the receiver (seeds hold real frames)
        receiver.receive_data(body)
        try:
            receiver.decrypt_available()
        except NoiseError:
            pass
        return
    sent = bytearray()
    got = bytearray()
    wire = bytearray()
    clean = True
    pos = 0
    try:
        while pos + 2 <= len(body):
            op, arg = body[pos], body[pos + 1]
            pos += 2
            if op % 5 == 0:  # encrypt `arg` bytes of the input
                plain = body[pos : pos + arg]
                pos += arg
                sent += plain
                wire += sender.encrypt(plain)
            elif op % 5 == 1:  # encrypt a large pattern, over frame boundaries
                plain = bytes([arg]) * (arg * 997 % (3 * NOISE_MAX_PLAINTEXT))
                sent += plain
                wire += sender.encrypt(plain)
            elif op % 5 == 2:  # deliver `arg` bytes of the wire
                receiver.receive_data(bytes(wire[:arg]))
                del wire[:arg]
                got += receiver.decrypt_available()
            elif op % 5 == 3 and wire:  # flip a byte on the wire
                wire[arg % len(wire)] ^= 1 + (op >> 3)
                clean = False
            elif op % 5 == 4:  # inject bytes from the input
                wire[arg % (len(wire) + 1) : arg % (len(wire) + 1)] = body[pos : pos + 8]
                pos += 8
                clean = False
        receiver.receive_data(bytes(wire))
        got += receiver.decrypt_available()
    except NoiseError:
        if clean:
            _fail("an untouched wire failed to decrypt")
        if not sent.startswith(got):
            _fail("decrypted bytes that were never sent")
        return
    if not sent.startswith(got) or (clean and got != sent):
        _fail("decrypted bytes differ from the sent ones")


def seeds_noise_transport() -> list[bytes]:
    key = bytes(range(32))
    raw = NoiseTransport(key, bytes(32)).encrypt(b"hello")
    return [
        _seed(0, 0, b"\x00\x05hello\x02\xff"),
        _seed(0, 0, b"\x00\x03abc\x00\x02de\x02\x04\x02\xff\x01\x10\x02\x07"),
        _seed(0, 0, b"\x01\x50\x02\x10\x03\x04\x02\xff"),
        _seed(0, 0, b"\x00\x04abcd\x04\x01zzzzzzzz\x02\xff"),
        _seed(1, 0, raw),
    ]
