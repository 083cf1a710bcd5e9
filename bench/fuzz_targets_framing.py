"""Fuzz harnesses for the framing under every stream: uvarints with length-prefixed
messages, and multistream-select."""

from __future__ import annotations

from bench.fuzz_fixtures import _chunks, _fail, _layout, _seed
from shardroute.errors import MessageTooLarge, MultistreamError, VarintError
from shardroute.limits import MULTISTREAM_MAX_MESSAGE, VARINT_MAX_BYTES
from shardroute.protocol.multistream import (
    MultistreamInitiator,
    MultistreamResponder,
    NeedData,
    ProtocolAgreed,
    ProtocolRejected,
    encode_line,
)
from shardroute.protocol.varint import (
    LengthPrefixedReader,
    decode_uvarint,
    encode_uvarint,
    frame,
    read_uvarint_exact,
)


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
