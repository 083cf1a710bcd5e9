"""Noise transport phase: u16-framed ChaCha20-Poly1305 frames, one counter per direction."""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from shardroute.errors import LocalProtocolError, NoiseError
from shardroute.limits import NOISE_MAX_PLAINTEXT, NOISE_TAG_LEN

_MAX_NONCE = (1 << 64) - 1
_NONCE_PREFIX = b"\x00\x00\x00\x00"


def nonce_bytes(n: int) -> bytes:
    # Noise's ChaChaPoly rule: 32 bits of zeros, then the counter little-endian.
    return _NONCE_PREFIX + n.to_bytes(8, "little")


class CipherState:
    __slots__ = ("_aead", "n")

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self.n = 0

    def _next_nonce(self) -> bytes:
        if self.n >= _MAX_NONCE:
            raise LocalProtocolError("Noise nonce exhausted; the connection must end")
        nonce = nonce_bytes(self.n)
        self.n += 1
        return nonce

    def encrypt(self, ad: bytes, plaintext: bytes) -> bytes:
        return self._aead.encrypt(self._next_nonce(), plaintext, ad or None)

    def decrypt(self, ad: bytes, ciphertext: bytes) -> bytes:
        nonce = self._next_nonce()
        try:
            return self._aead.decrypt(nonce, ciphertext, ad or None)
        except InvalidTag as exc:
            raise NoiseError("Noise frame failed authentication") from exc


class NoiseTransport:
    """The two cipher states after the handshake, with frame splitting and reassembly."""

    def __init__(self, send_key: bytes, receive_key: bytes) -> None:
        self._send = CipherState(send_key)
        self._receive = CipherState(receive_key)
        self._buffer = bytearray()
        self._offset = 0

    def encrypt(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        view = memoryview(plaintext)
        out = bytearray()
        for start in range(0, len(view), NOISE_MAX_PLAINTEXT):
            chunk = view[start : start + NOISE_MAX_PLAINTEXT]
            sealed = self._send.encrypt(b"", bytes(chunk))
            out += struct.pack(">H", len(sealed))
            out += sealed
        return bytes(out)

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def decrypt_available(self) -> bytes:
        buf = self._buffer
        pos = self._offset
        out = bytearray()
        while len(buf) - pos >= 2:
            length = (buf[pos] << 8) | buf[pos + 1]
            if length < NOISE_TAG_LEN:
                raise NoiseError(f"Noise frame of {length} bytes is shorter than its tag")
            end = pos + 2 + length
            if len(buf) < end:
                break
            out += self._receive.decrypt(b"", bytes(buf[pos + 2 : end]))
            pos = end
        if pos > 65536 or pos == len(buf):
            del buf[:pos]
            pos = 0
        self._offset = pos
        return bytes(out)
