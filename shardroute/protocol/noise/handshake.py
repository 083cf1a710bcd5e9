"""Noise_XX_25519_ChaChaPoly_SHA256 with the libp2p handshake payload (libp2p/specs noise).

    msg1  I→R  e
    msg2  R→I  e, ee, s, es, payload_R
    msg3  I→R  s, se, payload_I

Each side proves its libp2p identity by signing "noise-libp2p-static-key:" ‖ its static X25519
key; the peer ID comes from the identity key, and a dialer that expected a particular peer
refuses any other.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from shardroute.errors import InvalidKey, LocalProtocolError, NoiseError, PeerIdMismatch
from shardroute.identity.keys import Ed25519PrivateKey, PublicKey
from shardroute.identity.peer_id import PeerId
from shardroute.limits import NOISE_MAX_HANDSHAKE_PAYLOAD
from shardroute.pb import noise_pb2
from shardroute.protocol.events import NeedData
from shardroute.protocol.noise.transport import CipherState, NoiseTransport
from shardroute.protocol.protobuf import parse_message

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
SIGNATURE_PREFIX = b"noise-libp2p-static-key:"
DH_LEN = 32
TAG_LEN = 16


def _hkdf(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    temp = hmac.new(chaining_key, ikm, hashlib.sha256).digest()
    out1 = hmac.new(temp, b"\x01", hashlib.sha256).digest()
    out2 = hmac.new(temp, out1 + b"\x02", hashlib.sha256).digest()
    return out1, out2


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:  # an all-zero shared secret (low-order point)
        raise NoiseError(f"unusable X25519 key from peer: {exc}") from exc


class SymmetricState:
    def __init__(self) -> None:
        self.h = PROTOCOL_NAME  # exactly 32 bytes, so used as is
        self.ck = self.h
        self.cipher: CipherState | None = None
        self.mix_hash(b"")  # empty prologue

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, key = _hkdf(self.ck, ikm)
        self.cipher = CipherState(key)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        out = plaintext if self.cipher is None else self.cipher.encrypt(self.h, plaintext)
        self.mix_hash(out)
        return out

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        out = ciphertext if self.cipher is None else self.cipher.decrypt(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return out

    def split(self) -> tuple[bytes, bytes]:
        return _hkdf(self.ck, b"")


class Step(enum.Enum):
    WRITE_MSG1 = "write-msg1"
    READ_MSG1 = "read-msg1"
    WRITE_MSG2 = "write-msg2"
    READ_MSG2 = "read-msg2"
    WRITE_MSG3 = "write-msg3"
    READ_MSG3 = "read-msg3"
    DONE = "done"
    ERROR = "error"


# The XX message order for each role: the step after each step.
_NEXT: dict[tuple[bool, Step], Step] = {
    (True, Step.WRITE_MSG1): Step.READ_MSG2,
    (True, Step.READ_MSG2): Step.WRITE_MSG3,
    (True, Step.WRITE_MSG3): Step.DONE,
    (False, Step.READ_MSG1): Step.WRITE_MSG2,
    (False, Step.WRITE_MSG2): Step.READ_MSG3,
    (False, Step.READ_MSG3): Step.DONE,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeCompleted:
    remote_peer: PeerId
    remote_public_key: PublicKey
    transport: NoiseTransport
    remaining: bytes = b""


class NoiseHandshake:
    def __init__(
        self,
        *,
        initiator: bool,
        identity: Ed25519PrivateKey,
        expected_peer: PeerId | None = None,
        static_key: X25519PrivateKey | None = None,
        ephemeral_key: X25519PrivateKey | None = None,
    ) -> None:
        self.initiator = initiator
        self._identity = identity
        self._expected = expected_peer
        self._s = static_key or X25519PrivateKey.generate()
        self._e = ephemeral_key or X25519PrivateKey.generate()
        self._s_pub = _public_bytes(self._s)
        self._e_pub = _public_bytes(self._e)
        self._re: bytes = b""
        self._rs: bytes = b""
        self._ss = SymmetricState()
        self._in = bytearray()
        self._out = bytearray()
        self._remote: tuple[PeerId, PublicKey] | None = None
        self._done: HandshakeCompleted | None = None
        self.step = Step.WRITE_MSG1 if initiator else Step.READ_MSG1
        self._advance_writes()

    # -- sans-IO surface --
    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> None:
        if self.step in (Step.DONE, Step.ERROR):
            raise LocalProtocolError(f"handshake is {self.step.value}")
        self._in += data

    def next_event(self) -> NeedData | HandshakeCompleted:
        if self._done is not None:
            return self._done
        try:
            while self.step.name.startswith("READ"):
                message = self._take_frame()
                if message is None:
                    return NeedData()
                self._read(message)
                self._move()
                self._advance_writes()
        except (NoiseError, PeerIdMismatch):
            self.step = Step.ERROR
            raise
        if self.step is Step.DONE:
            return self._finish()
        return NeedData()

    # -- internals --
    def _move(self) -> None:
        self.step = _NEXT[(self.initiator, self.step)]

    def _take_frame(self) -> bytes | None:
        if len(self._in) < 2:
            return None
        (length,) = struct.unpack(">H", self._in[:2])
        if len(self._in) < 2 + length:
            return None
        message = bytes(self._in[2 : 2 + length])
        del self._in[: 2 + length]
        return message

    def _send_frame(self, message: bytes) -> None:
        self._out += struct.pack(">H", len(message)) + message

    def _advance_writes(self) -> None:
        while self.step.name.startswith("WRITE"):
            {
                Step.WRITE_MSG1: self._write_msg1,
                Step.WRITE_MSG2: self._write_msg2,
                Step.WRITE_MSG3: self._write_msg3,
            }[self.step]()
            self._move()

    def _payload(self) -> bytes:
        payload = noise_pb2.NoiseHandshakePayload()
        payload.identity_key = self._identity.public_key.to_protobuf()
        payload.identity_sig = self._identity.sign(SIGNATURE_PREFIX + self._s_pub)
        return payload.SerializeToString()

    def _write_msg1(self) -> None:
        self._ss.mix_hash(self._e_pub)
        self._send_frame(self._e_pub + self._ss.encrypt_and_hash(b""))

    def _write_msg2(self) -> None:
        ss = self._ss
        ss.mix_hash(self._e_pub)
        ss.mix_key(_dh(self._e, self._re))
        sealed_s = ss.encrypt_and_hash(self._s_pub)
        ss.mix_key(_dh(self._s, self._re))
        self._send_frame(self._e_pub + sealed_s + ss.encrypt_and_hash(self._payload()))

    def _write_msg3(self) -> None:
        ss = self._ss
        sealed_s = ss.encrypt_and_hash(self._s_pub)
        ss.mix_key(_dh(self._s, self._re))
        self._send_frame(sealed_s + ss.encrypt_and_hash(self._payload()))

    def _read(self, message: bytes) -> None:
        ss = self._ss
        if self.step is Step.READ_MSG1:
            if len(message) < DH_LEN:
                raise NoiseError(f"Noise msg1 of {len(message)} bytes is too short")
            self._re = message[:DH_LEN]
            ss.mix_hash(self._re)
            ss.decrypt_and_hash(message[DH_LEN:])  # libp2p sends no msg1 payload; tolerate one
            return
        if self.step is Step.READ_MSG2:
            if len(message) < DH_LEN + DH_LEN + TAG_LEN + TAG_LEN:
                raise NoiseError(f"Noise msg2 of {len(message)} bytes is too short")
            self._re = message[:DH_LEN]
            ss.mix_hash(self._re)
            ss.mix_key(_dh(self._e, self._re))
            self._rs = ss.decrypt_and_hash(message[DH_LEN : DH_LEN * 2 + TAG_LEN])
            ss.mix_key(_dh(self._e, self._rs))
            payload = ss.decrypt_and_hash(message[DH_LEN * 2 + TAG_LEN :])
        else:  # READ_MSG3
            if len(message) < DH_LEN + TAG_LEN + TAG_LEN:
                raise NoiseError(f"Noise msg3 of {len(message)} bytes is too short")
            self._rs = ss.decrypt_and_hash(message[: DH_LEN + TAG_LEN])
            ss.mix_key(_dh(self._e, self._rs))
            payload = ss.decrypt_and_hash(message[DH_LEN + TAG_LEN :])
        self._remote = self._verify_payload(payload)

    def _verify_payload(self, payload: bytes) -> tuple[PeerId, PublicKey]:
        if len(payload) > NOISE_MAX_HANDSHAKE_PAYLOAD:
            raise NoiseError(f"Noise handshake payload of {len(payload)} bytes is too large")
        parsed = parse_message(
            noise_pb2.NoiseHandshakePayload, payload, NoiseError, "Noise handshake payload"
        )
        if not parsed.identity_key or not parsed.identity_sig:
            raise NoiseError("Noise handshake payload lacks an identity key or signature")
        try:
            key = PublicKey.from_protobuf(parsed.identity_key)
        except InvalidKey as exc:
            raise NoiseError(f"peer's identity key is unusable: {exc}") from exc
        if not key.verify(SIGNATURE_PREFIX + self._rs, parsed.identity_sig):
            raise NoiseError("peer's signature over its Noise static key is invalid")
        peer = PeerId.from_public_key(key)
        if self._expected is not None and peer != self._expected:
            raise PeerIdMismatch(f"expected peer {self._expected} but the remote is {peer}")
        return peer, key

    def _finish(self) -> HandshakeCompleted:
        assert self._remote is not None
        k1, k2 = self._ss.split()
        send, receive = (k1, k2) if self.initiator else (k2, k1)
        remaining = bytes(self._in)
        self._in.clear()
        self._done = HandshakeCompleted(
            remote_peer=self._remote[0],
            remote_public_key=self._remote[1],
            transport=NoiseTransport(send, receive),
            remaining=remaining,
        )
        return self._done

    @property
    def handshake_hash(self) -> bytes:
        return self._ss.h
