"""Fuzz harnesses for every wire parser, one function per parser, with seed inputs.

Each harness holds the h11 invariant: any input parses, or raises that parser's own error
(the `allowed` tuple of its Target); any other exception or a failed check is a crash. Checks
are `raise AssertionError` rather than `assert` so `python -O` cannot drop them.

Inputs share one layout where a harness needs choices: byte 0 picks a mode, byte 1 a chunk
size for incremental feeding (0: all at once), the rest is the body. Seeds are valid messages
written by shardroute's own encoders, so mutation starts from real traffic.

Imported by `bench/fuzz.py` inside atheris' instrumentation, so nothing here may be imported
before the worker starts instrumenting (bench/fuzz.py imports it lazily).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from shardroute.addrs import (
    addr_text,
    ip_group,
    ip_of,
    multiaddr_from_bytes,
    multiaddr_to_bytes,
    parse_multiaddr,
    sanitize_peer_addrs,
    split_p2p,
    tcp_endpoint,
)
from shardroute.content import ContentId
from shardroute.errors import (
    InvalidCid,
    InvalidKey,
    InvalidPeerId,
    InvalidRecord,
    KadMessageError,
    MessageTooLarge,
    MultistreamError,
    NoiseError,
    ResourceLimitExceeded,
    VarintError,
    YamuxError,
)
from shardroute.identity.keys import Ed25519PrivateKey, KeyType, PublicKey, _encode_key_pb
from shardroute.identity.peer_id import PeerId
from shardroute.kad import cbor
from shardroute.kad.messages import (
    KadMessage,
    MessageType,
    PeerInfo,
    ValueRecord,
    decode_message,
    encode_message,
    fit_reply,
)
from shardroute.kad.records import (
    build_ipns_record,
    decode_ipns_record,
    make_default_validator,
    pk_record,
)
from shardroute.limits import (
    IDENTIFY_MAX_MESSAGE,
    MULTISTREAM_MAX_MESSAGE,
    NOISE_MAX_PLAINTEXT,
    VARINT_MAX_BYTES,
    YAMUX_HEADER_LEN,
)
from shardroute.pb import ipns_pb2, noise_pb2
from shardroute.protocol.identify import (
    IdentifyError,
    IdentifyInfo,
    decode_identify,
    encode_identify,
)
from shardroute.protocol.multistream import (
    MultistreamInitiator,
    MultistreamResponder,
    NeedData,
    ProtocolAgreed,
    ProtocolRejected,
    encode_line,
)
from shardroute.protocol.noise.handshake import (
    SIGNATURE_PREFIX,
    HandshakeCompleted,
    NoiseHandshake,
)
from shardroute.protocol.noise.handshake import NeedData as NoiseNeedData
from shardroute.protocol.noise.transport import NoiseTransport
from shardroute.protocol.varint import (
    LengthPrefixedReader,
    decode_uvarint,
    encode_uvarint,
    frame,
    read_uvarint_exact,
)
from shardroute.protocol.yamux.frames import (
    Flag,
    FrameType,
    GoAwayCode,
    pack_header,
    unpack_header,
)
from shardroute.protocol.yamux.session import (
    DataReceived,
    StreamClosed,
    StreamOpened,
    StreamReset,
    YamuxSession,
)


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    one_input: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    allowed: tuple[type[Exception], ...]
    about: str
    max_len: int = 4096  # libFuzzer -max_len: longer inputs only slow the harness down


def _layout(data: bytes) -> tuple[int, int, bytes]:
    """(mode, chunk size, body) of an input; short inputs read as zeros."""
    mode = data[0] if data else 0
    chunk = data[1] if len(data) > 1 else 0
    return mode, chunk, data[2:]


def _seed(mode: int, chunk: int, body: bytes) -> bytes:
    return bytes([mode, chunk]) + body


def _chunks(body: bytes, size: int) -> Iterator[bytes]:
    if size == 0:
        yield body
        return
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _fail(what: str) -> None:
    raise AssertionError(what)


# Fixed keys: key generation per input would dominate the cost, and crashes must replay.
ID_I = Ed25519PrivateKey.from_seed(bytes([0x21]) * 32)
ID_R = Ed25519PrivateKey.from_seed(bytes([0x22]) * 32)
PEER_I = PeerId.from_public_key(ID_I.public_key)
PEER_R = PeerId.from_public_key(ID_R.public_key)
NOW = 1_800_000_000.0


def _x25519(byte: int) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes([byte]) * 32)


# ------------------------------------------------------------------------------ varint
def fuzz_varint(data: bytes) -> None:
    limit, size, body = _layout(data)
    try:
        decoded = decode_uvarint(body)
    except VarintError:
        decoded = None
        if len(body) < VARINT_MAX_BYTES and all(b & 0x80 for b in body):
            _fail("an incomplete prefix was refused")
    else:
        if decoded is None:
            if len(body) >= VARINT_MAX_BYTES or not all(b & 0x80 for b in body):
                _fail("a whole or over-long varint read as incomplete")
        else:
            value, end = decoded
            if encode_uvarint(value) != body[:end]:
                _fail("decoded varint does not re-encode to its bytes")
            if read_uvarint_exact(body) != decoded:
                _fail("read_uvarint_exact disagrees with decode_uvarint")
    # A small limit in most inputs reaches MessageTooLarge without megabytes of input.
    reader = LengthPrefixedReader(max_message=limit * 8)
    messages: list[bytes] = []
    try:
        for chunk in _chunks(body, size):
            reader.receive_data(chunk)
            while (message := reader.next_message()) is not None:
                if len(message) > reader.max_message:
                    _fail("message over the limit returned")
                messages.append(message)
    except (VarintError, MessageTooLarge):
        return
    if b"".join(frame(m) for m in messages) + reader.take_remaining() != body:
        _fail("messages and the remainder do not add up to the input")


def seeds_varint() -> list[bytes]:
    out = [_seed(255, 0, encode_uvarint(v)) for v in (0, 1, 127, 128, 300, 1 << 62)]
    stream = frame(b"hello") + frame(b"") + frame(bytes(200)) + b"\x05ab"
    out += [_seed(255, 0, stream), _seed(255, 3, stream), _seed(4, 1, stream)]
    return out


# ------------------------------------------------------------------------------ multistream
MS_SUPPORTED = ("/noise", "/yamux/1.0.0", "/ipfs/kad/1.0.0")
MS_PROPOSALS = ("/tls/1.0.0", "/noise")


def _check_multistream_output(out: bytes) -> None:
    reader = LengthPrefixedReader(MULTISTREAM_MAX_MESSAGE)
    reader.receive_data(out)
    while (message := reader.next_message()) is not None:
        if not message.endswith(b"\n"):
            _fail("we sent a multistream message without its newline")
        message.decode()
    if reader.buffered:
        _fail("we sent a partial multistream message")


def fuzz_multistream(data: bytes) -> None:
    mode, size, body = _layout(data)
    machine: MultistreamInitiator | MultistreamResponder
    if mode & 1:
        machine = MultistreamInitiator(list(MS_PROPOSALS))
    elif mode & 2:
        machine = MultistreamResponder(MS_SUPPORTED, max_proposals=1 + (mode >> 2) % 16)
    else:
        machine = MultistreamResponder(lambda p: p.startswith("/ipfs/"), listed=["/ipfs/kad/1.0.0"])
    _check_multistream_output(machine.data_to_send())
    for chunk in _chunks(body, size):
        machine.receive_data(chunk)
        try:
            event = machine.next_event()
        except MultistreamError:
            if machine.state.value != "error":
                _fail("a multistream error left the machine out of its error state")
            _check_multistream_output(machine.data_to_send())
            return
        _check_multistream_output(machine.data_to_send())
        if isinstance(event, NeedData):
            continue
        if isinstance(event, ProtocolAgreed):
            ours = MS_PROPOSALS if mode & 1 else MS_SUPPORTED if mode & 2 else None
            if ours is not None and event.protocol not in ours:
                _fail(f"agreed on {event.protocol!r}, which we never offered")
            if ours is None and not event.protocol.startswith("/ipfs/"):
                _fail(f"agreed on unsupported {event.protocol!r}")
        elif not isinstance(event, ProtocolRejected) or not mode & 1:
            _fail(f"unexpected event {event!r}")
        if machine.next_event() != event:
            _fail("a finished negotiation changed its answer")
        return


def seeds_multistream() -> list[bytes]:
    header = encode_line("/multistream/1.0.0")
    out = []
    # to the responder: header, a refused proposal, ls, an accepted one with trailing bytes
    to_responder = (
        header + encode_line("/tls/1.0.0") + encode_line("ls") + encode_line("/noise") + b"\x00\x01"
    )
    out += [_seed(2, 0, to_responder), _seed(2, 5, to_responder), _seed(0, 0, to_responder)]
    out.append(_seed(0, 0, header + encode_line("/ipfs/kad/1.0.0")))
    # to the initiator: header, na to /tls, echo of /noise
    answers = header + encode_line("na") + encode_line("/noise") + b"rest"
    out += [_seed(1, 0, answers), _seed(1, 7, answers)]
    out.append(_seed(1, 0, header + encode_line("na") + encode_line("na")))
    return out


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
        if not isinstance(event, NoiseNeedData):
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
            if not isinstance(responder.next_event(), NoiseNeedData):
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


def _other_identities() -> list[tuple[bytes, Callable[[bytes], bytes]]]:
    """Public-key protobufs and signers for RSA, secp256k1 and ECDSA (seeds only)."""
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    k1 = ec.generate_private_key(ec.SECP256K1())
    p256 = ec.generate_private_key(ec.SECP256R1())
    k1_point = k1.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    return [
        (
            _encode_key_pb(KeyType.RSA, rsa_key.public_key().public_bytes(der, spki)),
            lambda m: rsa_key.sign(m, padding.PKCS1v15(), hashes.SHA256()),
        ),
        (
            _encode_key_pb(KeyType.Secp256k1, k1_point),
            lambda m: k1.sign(m, ec.ECDSA(hashes.SHA256())),
        ),
        (
            _encode_key_pb(KeyType.ECDSA, p256.public_key().public_bytes(der, spki)),
            lambda m: p256.sign(m, ec.ECDSA(hashes.SHA256())),
        ),
    ]


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


# ------------------------------------------------------------------------------ yamux frames
def fuzz_yamux_frames(data: bytes) -> None:
    offset = data[0] % 4 if data else 0
    if len(data) < offset + YAMUX_HEADER_LEN:
        return  # callers never pass less than a header (the session waits for 12 bytes)
    try:
        header = unpack_header(data, offset)
    except YamuxError as exc:
        if exc.code != GoAwayCode.PROTOCOL_ERROR:
            _fail("a bad header did not map to a protocol-error GoAway")
        return
    raw = data[offset : offset + YAMUX_HEADER_LEN]
    flags = struct.unpack(">H", raw[2:4])[0] & 0xF
    if pack_header(header.type, header.flags, header.stream_id, header.length) != (
        raw[:2] + struct.pack(">H", flags) + raw[4:]
    ):
        _fail("header does not re-pack to its bytes")


def seeds_yamux_frames() -> list[bytes]:
    return [
        b"\x00" + pack_header(FrameType.DATA, Flag.SYN, 1, 5),
        b"\x01\xff" + pack_header(FrameType.WINDOW_UPDATE, Flag.ACK | Flag.FIN, 2, 1 << 20),
        b"\x02\xff\xff" + pack_header(FrameType.PING, Flag.SYN, 0, 7),
        b"\x03\xff\xff\xff" + pack_header(FrameType.GO_AWAY, Flag.NONE, 0, 2),
    ]


# ------------------------------------------------------------------------------ yamux session
def _parse_own_output(out: bytes, granted: dict[int, int]) -> bytes:
    """Our output must be whole, valid frames; counts the window we grant per stream."""
    pos = 0
    go_away = b""
    while pos < len(out):
        if len(out) - pos < YAMUX_HEADER_LEN:
            _fail("we sent a partial yamux header")
        header = unpack_header(out, pos)
        pos += YAMUX_HEADER_LEN
        if header.type is FrameType.DATA:
            pos += header.length
            if pos > len(out):
                _fail("we sent a partial yamux data frame")
        elif header.type is FrameType.WINDOW_UPDATE:
            granted[header.stream_id] = granted.get(header.stream_id, 0) + header.length
        elif header.type is FrameType.GO_AWAY:
            go_away = out[pos - YAMUX_HEADER_LEN : pos]
    return go_away


def fuzz_yamux_session(data: bytes) -> None:
    """Inbound bytes interleaved with local calls. Errors are YamuxError alone, a session that
    raised has queued its GoAway, our output is valid frames, and no stream is ever handed
    more data than the window we granted it."""
    mode, _, body = _layout(data)
    small = bool(mode & 2)  # tiny windows and stream caps reach the limits in short inputs
    window = 64 if small else 256 * 1024
    session = YamuxSession(
        is_client=bool(mode & 1),
        max_streams=3 if small else 1024,
        initial_window=window,
        max_window=4 * window,
        max_frame_payload=16 if small else 64 * 1024,
    )
    granted: dict[int, int] = {}
    received: dict[int, int] = {}
    closed_locally: set[int] = set()
    pos = 0

    def live(index: int) -> int | None:
        ids = session.stream_ids()
        return ids[index % len(ids)] if ids else None

    while pos + 2 <= len(body):
        op, arg = body[pos] % 9, body[pos + 1]
        pos += 2
        if op <= 1:  # raw inbound bytes (op 1: a header of ours plus `arg` body bytes)
            chunk = body[pos : pos + arg]
            pos += arg
            try:
                events = session.receive_data(chunk)
            except YamuxError:
                if not session.closed:
                    _fail("a yamux error left the session open")
                if not session.go_away_sent:
                    _fail("a yamux error queued no GoAway")
                _parse_own_output(session.data_to_send(), granted)
                return
            for i, event in enumerate(events):
                if isinstance(event, StreamOpened):
                    granted[event.stream_id] = 0
                    received[event.stream_id] = 0
                    closed_locally.discard(event.stream_id)
                elif isinstance(event, DataReceived):
                    total = received.get(event.stream_id, 0) + len(event.data)
                    received[event.stream_id] = total
                    if total > window + granted.get(event.stream_id, 0):
                        _fail(f"stream {event.stream_id} took {total} bytes past its window")
                    session.acknowledge_received(event.stream_id, len(event.data))
                elif (
                    isinstance(event, StreamReset | StreamClosed)
                    and session.has_stream(event.stream_id)
                    # the peer may SYN a forgotten ID again later in the batch (go allows it)
                    and StreamOpened(stream_id=event.stream_id) not in events[i:]
                ):
                    _fail(f"stream {event.stream_id} is still live after {event!r}")
        elif op == 2:
            if not (session.closed or session.go_away_sent or session.go_away_received):
                try:
                    stream_id = session.open_stream()
                except ResourceLimitExceeded:
                    pass
                else:
                    granted[stream_id] = 0
                    received[stream_id] = 0
        elif op == 3 and not session.closed:
            target = live(arg)
            if target is not None and target not in closed_locally:
                session.send_data(target, body[pos : pos + arg])
                pos += arg
        elif op == 4:
            target = live(arg)
            if target is not None:
                session.close_stream(target)
                closed_locally.add(target)
        elif op == 5:
            target = live(arg)
            if target is not None:
                session.reset_stream(target)
        elif op == 6:
            target = live(arg)
            if target is not None:
                session.acknowledge_received(target, arg * 16)
        elif op == 7:
            session.send_ping()
        else:
            session.go_away()
        _parse_own_output(session.data_to_send(), granted)


def _chunk_op(raw: bytes) -> bytes:
    out = bytearray()
    for start in range(0, len(raw), 255):
        piece = raw[start : start + 255]
        out += bytes([0, len(piece)]) + piece
    return bytes(out)


def seeds_yamux_session() -> list[bytes]:
    def frame_(
        t: FrameType, f: Flag, sid: int, body: bytes = b"", length: int | None = None
    ) -> bytes:
        return pack_header(t, f, sid, len(body) if length is None else length) + body

    inbound_even = (
        frame_(FrameType.WINDOW_UPDATE, Flag.SYN, 2, length=0)
        + frame_(FrameType.DATA, Flag.NONE, 2, b"hello")
        + frame_(FrameType.WINDOW_UPDATE, Flag.NONE, 2, length=1000)
        + frame_(FrameType.DATA, Flag.FIN, 2, b"bye")
        + frame_(FrameType.PING, Flag.SYN, 0, length=9)
    )
    inbound_odd = (
        frame_(FrameType.DATA, Flag.SYN, 1, b"x" * 40)
        + frame_(FrameType.DATA, Flag.NONE, 1, b"y" * 40)
        + frame_(FrameType.WINDOW_UPDATE, Flag.RST, 1, length=0)
        + frame_(FrameType.GO_AWAY, Flag.NONE, 0, length=0)
    )
    # A client opens stream 1; the server ACKs it, sends data and FIN; we close too.
    ack = frame_(FrameType.WINDOW_UPDATE, Flag.ACK, 1, length=0) + frame_(
        FrameType.DATA, Flag.FIN, 1, b"reply"
    )
    local = b"\x02\x00\x03\x04ping" + _chunk_op(ack) + b"\x04\x00\x07\x00\x08\x00"
    return [
        _seed(1, 0, _chunk_op(inbound_even)),
        _seed(3, 0, _chunk_op(inbound_even)),
        _seed(0, 0, _chunk_op(inbound_odd)),
        _seed(2, 0, _chunk_op(inbound_odd)),
        _seed(1, 0, local),
        _seed(3, 0, local),
    ]


# ------------------------------------------------------------------------------ identify
FULL_INFO = IdentifyInfo(
    public_key=ID_R.public_key.to_protobuf(),
    listen_addrs=(parse_multiaddr("/ip4/1.2.3.4/tcp/4001").to_bytes(),),
    observed_addr=parse_multiaddr("/ip4/5.6.7.8/tcp/55555").to_bytes(),
    protocols=("/ipfs/kad/1.0.0", "/ipfs/id/1.0.0"),
    agent_version="go-ipfs/0.30",
    protocol_version="ipfs/0.1.0",
    signed_peer_record=b"\x0a\x00",
    present=frozenset(
        {
            "public_key",
            "listen_addrs",
            "observed_addr",
            "protocols",
            "agent_version",
            "protocol_version",
            "signed_peer_record",
        }
    ),
)


def _apply_identify(info: IdentifyInfo) -> None:
    """What net/identify.py does with a message, minus the peerstore."""
    if info.public_key is not None:
        try:
            key = PublicKey.from_protobuf(info.public_key)
        except InvalidKey:
            pass
        else:
            PEER_R.matches_public_key(key)
    for addr in sanitize_peer_addrs(PEER_R, info.listen_addrs):
        multiaddr_to_bytes(addr)
    if info.observed_addr is not None:
        try:
            multiaddr_from_bytes(info.observed_addr)
        except ValueError:
            pass


def fuzz_identify(data: bytes) -> None:
    mode, size, body = _layout(data)
    if mode & 1:  # one stream of framed messages, merged as the host reads them
        reader = LengthPrefixedReader(IDENTIFY_MAX_MESSAGE)
        merged = IdentifyInfo()
        try:
            for chunk in _chunks(body, size):
                reader.receive_data(chunk)
                while (message := reader.next_message()) is not None:
                    merged = decode_identify(message).merged_over(merged)
        except (IdentifyError, VarintError, MessageTooLarge):
            return
        _apply_identify(merged)
        return
    try:
        info = decode_identify(body)
    except IdentifyError:
        return
    if decode_identify(encode_identify(info)) != info:
        _fail("identify message does not survive a re-encode")
    merged = info.merged_over(FULL_INFO)
    if merged.present != FULL_INFO.present | info.present:
        _fail("merge lost a field")
    _apply_identify(info)
    _apply_identify(merged)


def seeds_identify() -> list[bytes]:
    full = encode_identify(FULL_INFO)
    push = encode_identify(
        IdentifyInfo(protocols=("/ipfs/ping/1.0.0",), present=frozenset({"protocols"}))
    )
    return [
        _seed(0, 0, full),
        _seed(0, 0, push),
        _seed(1, 0, frame(full) + frame(push)),
        _seed(1, 13, frame(full) + frame(push)),
    ]


# ------------------------------------------------------------------------------ kad messages
def fuzz_kad(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except KadMessageError:
        return
    body = encode_message(msg)
    if decode_message(body) != msg:
        _fail("kad message does not survive a re-encode")
    limit = 64 + len(data) // 2
    fitted = fit_reply(msg, limit)
    if len(encode_message(fitted)) > limit and (fitted.closer_peers or fitted.provider_peers):
        _fail("fit_reply left peers in a reply over the limit")


def seeds_kad() -> list[bytes]:
    addrs = (
        parse_multiaddr("/ip4/1.2.3.4/tcp/4001"),
        parse_multiaddr("/ip6/::1/tcp/4001"),
        parse_multiaddr("/dns4/example.com/tcp/443/wss"),
    )
    peers = (PeerInfo(PEER_I, addrs, True), PeerInfo(PEER_R, addrs[:1]))
    record_key, record_value = pk_record(ID_R.public_key)
    messages = [
        KadMessage(type=MessageType.FIND_NODE, key=PEER_I.raw, closer_peers=peers),
        KadMessage(
            type=MessageType.GET_PROVIDERS,
            key=ContentId.from_shard_hash(bytes(32)).dht_key,
            closer_peers=peers,
            provider_peers=peers[:1],
        ),
        KadMessage(
            type=MessageType.PUT_VALUE,
            key=record_key,
            record=ValueRecord(record_key, record_value, "2027-01-01T00:00:00Z"),
        ),
        KadMessage(type=MessageType.PING),
    ]
    return [encode_message(m) for m in messages]


# ------------------------------------------------------------------------------ records
VALIDATOR = make_default_validator()
IPNS_KEY, IPNS_VALUE = build_ipns_record(ID_R, b"/ipfs/bafkqaaa", sequence=3, expires_at=NOW + 60)


def fuzz_records(data: bytes) -> None:
    mode, split, body = _layout(data)
    if mode % 3 == 0:  # key and value both from the input
        key, value = body[:split], body[split:]
    elif mode % 3 == 1:
        key, value = b"/pk/" + PEER_R.raw, body
    else:
        key, value = IPNS_KEY, body
    try:
        VALIDATOR.validate(key, value, NOW)
    except InvalidRecord:
        pass
    values = [value[i : i + 1 + split] for i in range(0, len(value), 1 + split)][:8]
    try:
        best = VALIDATOR.select(key, values)
    except InvalidRecord:
        return
    if not 0 <= best < len(values):
        _fail("select picked an index outside the values")


def seeds_records() -> list[bytes]:
    pk_key, pk_value = pk_record(ID_R.public_key)
    return [
        _seed(0, len(pk_key), pk_key + pk_value),
        _seed(1, 0, pk_value),
        _seed(2, 0, IPNS_VALUE),
        _seed(0, len(IPNS_KEY), IPNS_KEY + IPNS_VALUE),
        _seed(2, 40, IPNS_VALUE + IPNS_VALUE),
    ]


# ------------------------------------------------------------------------------ IPNS and CBOR
def _signed_entry(data: bytes, mode: int) -> bytes:
    """An IpnsEntry whose signatureV2 over `data` is real, so validation reaches the CBOR."""
    entry = ipns_pb2.IpnsEntry()
    entry.data = data
    entry.signatureV2 = ID_R.sign(b"ipns-signature:" + data)
    if mode & 2:
        entry.pubKey = ID_R.public_key.to_protobuf()
    if mode & 4:  # V1 fields copied from whatever the data says
        try:
            fields = cbor.decode(data)
        except cbor.CborError:
            fields = {}
        if isinstance(fields, dict):
            for name, attr in (("Value", "value"), ("Validity", "validity")):
                if isinstance(fields.get(name), bytes):
                    setattr(entry, attr, fields[name])
            for name, attr in (("Sequence", "sequence"), ("TTL", "ttl")):
                v = fields.get(name)
                if type(v) is int and 0 <= v < 1 << 64:
                    setattr(entry, attr, v)
        entry.signatureV1 = b"\x00"
    return entry.SerializeToString()


def fuzz_ipns(data: bytes) -> None:
    mode, _, body = _layout(data)
    try:
        decoded = cbor.decode(body)
    except cbor.CborError:
        pass
    else:
        encoded = cbor.encode(decoded)
        if cbor.decode(encoded) != decoded or cbor.encode(cbor.decode(encoded)) != encoded:
            _fail("CBOR value does not survive a canonical re-encode")
    value = body if mode & 1 else _signed_entry(body, mode)
    try:
        record = decode_ipns_record(IPNS_KEY, value, NOW)
    except InvalidRecord:
        return
    if record.expires_at < NOW or record.public_key != ID_R.public_key:
        _fail("a valid IPNS record is expired or signed by another key")
    if VALIDATOR.select(IPNS_KEY, [value, b"junk"]) != 0:
        _fail("select preferred junk over a valid record")


def seeds_ipns() -> list[bytes]:
    entry = ipns_pb2.IpnsEntry()
    entry.ParseFromString(IPNS_VALUE)
    data = entry.data
    extended = cbor.encode(
        {
            **cbor.decode(data),
            "Extra": [1, -2, 1.5, None, True, "t", cbor.Link(b"\x01\x55\x00\x00")],
        }
    )
    return [
        _seed(0, 0, data),
        _seed(2, 0, data),
        _seed(4, 0, data),
        _seed(6, 0, extended),
        _seed(1, 0, IPNS_VALUE),
    ]


# ------------------------------------------------------------------------------ CIDs
def fuzz_cid(data: bytes) -> None:
    mode, _, body = _layout(data)
    try:
        if mode % 3 == 0:
            cid = ContentId.from_bytes(body)
        elif mode % 3 == 1:
            cid = ContentId.parse(body.decode("utf-8", "replace"))
        else:
            cid = ContentId.parse_cid_or_hash(body.decode("utf-8", "replace"))
    except InvalidCid:
        return
    if ContentId.from_bytes(cid.to_bytes()) != cid:
        _fail("CID does not survive bytes")
    if ContentId.parse(str(cid)) != cid:
        _fail("CID does not survive text")
    v1 = cid.to_v1()
    if ContentId.parse(str(v1)) != v1:
        _fail("CIDv1 form does not survive text")
    if cid.shard_hash is not None and len(cid.shard_hash) != 32:
        _fail("shard hash is not 32 bytes")


def seeds_cid() -> list[bytes]:
    cids = [
        ContentId.from_shard_hash(bytes(range(32))),
        ContentId(1, 0x70, b"\x12\x20" + bytes(32)),
        ContentId(0, 0x70, b"\x12\x20" + bytes(range(32))),
        ContentId(1, 0x0129, b"\x12\x20" + bytes(32)),
        ContentId(1, 0x55, b"\x00\x03abc"),
    ]
    out = [_seed(0, 0, c.to_bytes()) for c in cids]
    out += [_seed(1, 0, str(c).encode()) for c in cids]
    out.append(_seed(2, 0, bytes(range(32)).hex().encode()))
    out.append(_seed(1, 0, b"zb2rhe5P4gXftAwvA4eXQ5HJwsER2owDyS9sKaQRRVQPn93bA"))
    return out


# ------------------------------------------------------------------------------ multiaddrs
def fuzz_multiaddr(data: bytes) -> None:
    mode, _, body = _layout(data)
    try:
        if mode & 1:
            addr = parse_multiaddr(body.decode("utf-8", "replace"))
        else:
            addr = multiaddr_from_bytes(body)
    except ValueError:
        return
    raw = multiaddr_to_bytes(addr)
    if raw and len(raw) <= 1024 and multiaddr_from_bytes(raw) != addr:
        _fail("multiaddr does not survive bytes")
    if parse_multiaddr(addr_text(addr)) != addr:
        _fail("multiaddr does not survive text")
    try:
        split_p2p(addr)
    except ValueError:
        pass
    tcp_endpoint(addr)
    ip = ip_of(addr)
    if ip is not None:
        ip_group(str(ip))
        ip_group(str(ip), exempt_private=False)
    if raw:
        sanitize_peer_addrs(PEER_R, [raw])


def seeds_multiaddr() -> list[bytes]:
    texts = [
        "/ip4/1.2.3.4/tcp/4001",
        f"/ip4/1.2.3.4/tcp/4001/p2p/{PEER_R}",
        f"/ip6/2001:db8::1/tcp/4001/p2p/{PEER_R.to_cid()}",
        "/dns4/example.com/tcp/443/wss",
        "/ip4/127.0.0.1/udp/4001/quic-v1",
        f"/ip4/1.2.3.4/tcp/1/p2p/{PEER_I}/p2p-circuit/p2p/{PEER_R}",
        "/ip6zone/eth0/ip6/fe80::1/tcp/1",
        "/unix/tmp%2Fsock",
    ]
    out = []
    for text in texts:
        try:
            addr = parse_multiaddr(text)
        except ValueError:
            continue
        out += [_seed(0, 0, addr.to_bytes()), _seed(1, 0, text.encode())]
    return out


# ------------------------------------------------------------------------------ peer IDs and keys
def fuzz_peer_id(data: bytes) -> None:
    mode, _, body = _layout(data)
    if mode % 3 == 2:  # a public key protobuf, a signature and a message
        _fuzz_public_key(body)
        return
    try:
        if mode % 3 == 0:
            peer = PeerId.from_bytes(body)
        else:
            peer = PeerId.parse(body.decode("utf-8", "replace"))
    except InvalidPeerId:
        return
    if PeerId.parse(str(peer)) != peer or PeerId.parse(peer.to_cid()) != peer:
        _fail("peer ID does not survive its text forms")
    peer.extract_public_key()


def _fuzz_public_key(body: bytes) -> None:
    if len(body) < 4:
        return
    key_len = struct.unpack(">H", body[:2])[0]
    key_pb = body[2 : 2 + key_len]
    rest = body[2 + key_len :]
    sig_len = struct.unpack(">H", rest[:2])[0] if len(rest) >= 2 else 0
    signature, message = rest[2 : 2 + sig_len], rest[2 + sig_len :]
    try:
        key = PublicKey.from_protobuf(key_pb)
    except InvalidKey:
        return
    if PublicKey.from_protobuf(key.to_protobuf()) != key:
        _fail("public key does not survive its protobuf")
    if type(key.verify(message, signature)) is not bool:
        _fail("verify answered something other than a bool")
    peer = PeerId.from_public_key(key)
    if PeerId.from_bytes(peer.raw) != peer or not peer.matches_public_key(key):
        _fail("peer ID of a key is not a valid peer ID of that key")


def seeds_peer_id() -> list[bytes]:
    out = []
    for peer in (PEER_I, PEER_R, PeerId(b"\x12\x20" + bytes(32))):
        out += [_seed(0, 0, peer.raw), _seed(1, 0, str(peer).encode())]
        out.append(_seed(1, 0, peer.to_cid().encode()))
    message = b"a message to sign"
    signers: list[tuple[bytes, Callable[[bytes], bytes]]] = [
        (ID_R.public_key.to_protobuf(), ID_R.sign),
        *_other_identities(),
    ]
    for key_pb, sign in signers:
        signature = sign(message)
        body = struct.pack(">H", len(key_pb)) + key_pb + struct.pack(">H", len(signature))
        out.append(_seed(2, 0, body + signature + message))
    return out


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "varint",
            fuzz_varint,
            seeds_varint,
            (VarintError, MessageTooLarge),
            "uvarints and length-prefixed framing (protocol/varint.py)",
            max_len=1024,
        ),
        Target(
            "multistream",
            fuzz_multistream,
            seeds_multistream,
            (MultistreamError,),
            "multistream-select, both roles (protocol/multistream.py)",
        ),
        Target(
            "noise_handshake",
            fuzz_noise_handshake,
            seeds_noise_handshake,
            (NoiseError,),
            "Noise XX both roles: raw messages, fuzzed payloads inside real encryption, "
            "bytes after msg3 (protocol/noise/handshake.py)",
        ),
        Target(
            "noise_transport",
            fuzz_noise_transport,
            seeds_noise_transport,
            (NoiseError,),
            "Noise transport frames: raw, split, corrupted, injected (protocol/noise/transport.py)",
        ),
        Target(
            "yamux_frames",
            fuzz_yamux_frames,
            seeds_yamux_frames,
            (YamuxError,),
            "Yamux headers (protocol/yamux/frames.py)",
            max_len=64,
        ),
        Target(
            "yamux_session",
            fuzz_yamux_session,
            seeds_yamux_session,
            (YamuxError,),
            "a Yamux session: inbound bytes between local calls (protocol/yamux/session.py)",
        ),
        Target(
            "identify",
            fuzz_identify,
            seeds_identify,
            (IdentifyError, VarintError, MessageTooLarge),
            "identify messages, single and merged streams, and what the host takes from "
            "them (protocol/identify.py)",
        ),
        Target(
            "kad",
            fuzz_kad,
            seeds_kad,
            (KadMessageError,),
            "Kademlia messages: protobuf decode and conversion, fit_reply (kad/messages.py)",
        ),
        Target(
            "records",
            fuzz_records,
            seeds_records,
            (InvalidRecord,),
            "record validation and selection, /pk/ and /ipns/ (kad/records.py)",
        ),
        Target(
            "ipns",
            fuzz_ipns,
            seeds_ipns,
            (InvalidRecord, cbor.CborError),
            "IPNS validation behind a real signature, and DAG-CBOR (kad/records.py, kad/cbor.py)",
        ),
        Target("cid", fuzz_cid, seeds_cid, (InvalidCid,), "CIDs, bytes and text (content.py)"),
        Target(
            "multiaddr",
            fuzz_multiaddr,
            seeds_multiaddr,
            (ValueError,),
            "multiaddrs, bytes and text, and the helpers on them (addrs.py)",
        ),
        Target(
            "peer_id",
            fuzz_peer_id,
            seeds_peer_id,
            (InvalidPeerId, InvalidKey),
            "peer IDs (bytes, base58, CID) and public keys with verify "
            "(identity/peer_id.py, identity/keys.py)",
        ),
    )
}
