"""multistream-select 1.0, both roles, sans-IO.

Messages are uvarint-length-prefixed UTF-8 lines ending in `\\n`. The initiator pipelines the
header and its first proposal; the responder sends its header at once, answers `na` to what it
does not speak (go proposes /tls/1.0.0 before /noise) and hands bytes that arrived after the
agreed proposal to the protocol that follows.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from shardroute.errors import (
    LocalProtocolError,
    MessageTooLarge,
    MultistreamError,
    ProtocolNotSupported,
    VarintError,
)
from shardroute.limits import MULTISTREAM_MAX_MESSAGE, MULTISTREAM_MAX_PROPOSALS
from shardroute.protocol.events import NeedData
from shardroute.protocol.varint import LengthPrefixedReader, frame

MULTISTREAM_ID = "/multistream/1.0.0"
NA = "na"
LS = "ls"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolAgreed:
    protocol: str
    remaining: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolRejected:
    proposals: tuple[str, ...]


NEED_DATA = NeedData()
Event = NeedData | ProtocolAgreed | ProtocolRejected


def encode_line(text: str) -> bytes:
    body = text.encode() + b"\n"
    if len(body) > MULTISTREAM_MAX_MESSAGE:
        raise LocalProtocolError(f"multistream message of {len(body)} bytes is over the limit")
    return frame(body)


def encode_ls_reply(protocols: Sequence[str]) -> bytes:
    inner = b"".join(encode_line(p) for p in protocols) + b"\n"
    return frame(inner)


class _Lines:
    def __init__(self) -> None:
        self._reader = LengthPrefixedReader(MULTISTREAM_MAX_MESSAGE)

    def receive_data(self, data: bytes) -> None:
        self._reader.receive_data(data)

    def next_line(self) -> str | None:
        try:
            body = self._reader.next_message()
        except (MessageTooLarge, VarintError) as exc:
            raise MultistreamError(f"bad multistream framing: {exc}") from exc
        if body is None:
            return None
        if not body.endswith(b"\n"):
            raise MultistreamError("multistream message does not end in a newline")
        try:
            return body[:-1].decode()
        except UnicodeDecodeError as exc:
            raise MultistreamError("multistream message is not UTF-8") from exc

    def take_remaining(self) -> bytes:
        return self._reader.take_remaining()


class InitiatorState(enum.Enum):
    AWAIT_HEADER = "await-header"
    AWAIT_ANSWER = "await-answer"
    DONE = "done"
    ERROR = "error"


class MultistreamInitiator:
    """Proposes `protocols` in order until one is echoed or all get `na`."""

    def __init__(self, protocols: Sequence[str]) -> None:
        if not protocols:
            raise LocalProtocolError("nothing to propose")
        self._proposals = list(protocols)
        self._index = 0
        self._lines = _Lines()
        self._out = bytearray(encode_line(MULTISTREAM_ID) + encode_line(self._proposals[0]))
        self.state = InitiatorState.AWAIT_HEADER
        self._result: Event | None = None

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> None:
        if self.state is InitiatorState.DONE:
            raise LocalProtocolError("negotiation already finished")
        self._lines.receive_data(data)

    def next_event(self) -> Event:
        if self._result is not None:
            return self._result
        try:
            while (line := self._lines.next_line()) is not None:
                if self.state is InitiatorState.AWAIT_HEADER:
                    if line != MULTISTREAM_ID:
                        raise MultistreamError(f"expected {MULTISTREAM_ID!r}, got {line[:64]!r}")
                    self.state = InitiatorState.AWAIT_ANSWER
                elif line == self._proposals[self._index]:
                    self.state = InitiatorState.DONE
                    self._result = ProtocolAgreed(
                        protocol=line, remaining=self._lines.take_remaining()
                    )
                    return self._result
                elif line == NA:
                    self._index += 1
                    if self._index == len(self._proposals):
                        self.state = InitiatorState.DONE
                        self._result = ProtocolRejected(proposals=tuple(self._proposals))
                        return self._result
                    self._out += encode_line(self._proposals[self._index])
                else:
                    raise MultistreamError(f"unexpected answer {line[:64]!r} to our proposal")
        except MultistreamError:
            self.state = InitiatorState.ERROR
            raise
        return NEED_DATA


class ResponderState(enum.Enum):
    AWAIT_HEADER = "await-header"
    AWAIT_PROPOSAL = "await-proposal"
    DONE = "done"
    ERROR = "error"


class MultistreamResponder:
    """Answers proposals: echoes the first supported one, `na` to the rest, lists on `ls`."""

    def __init__(
        self,
        supported: Collection[str] | Callable[[str], bool],
        *,
        max_proposals: int = MULTISTREAM_MAX_PROPOSALS,
        listed: Sequence[str] | None = None,
    ) -> None:
        if callable(supported):
            self._supports = supported
            self._listed = list(listed or [])
        else:
            protocols = list(supported)
            self._supports = protocols.__contains__
            self._listed = list(listed or protocols)
        self._max = max_proposals
        self._seen = 0
        self._lines = _Lines()
        self._out = bytearray(encode_line(MULTISTREAM_ID))
        self.state = ResponderState.AWAIT_HEADER
        self._result: ProtocolAgreed | None = None

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> None:
        if self.state is ResponderState.DONE:
            raise LocalProtocolError("negotiation already finished")
        self._lines.receive_data(data)

    def next_event(self) -> NeedData | ProtocolAgreed:
        if self._result is not None:
            return self._result
        try:
            while (line := self._lines.next_line()) is not None:
                if self.state is ResponderState.AWAIT_HEADER:
                    if line != MULTISTREAM_ID:
                        self._out += encode_line(NA)
                        raise MultistreamError(f"expected {MULTISTREAM_ID!r}, got {line[:64]!r}")
                    self.state = ResponderState.AWAIT_PROPOSAL
                    continue
                self._seen += 1
                if self._seen > self._max:
                    raise MultistreamError(f"more than {self._max} proposals")
                if line == LS:
                    self._out += encode_ls_reply(self._listed)
                elif line and line != NA and self._supports(line):
                    self._out += encode_line(line)
                    self.state = ResponderState.DONE
                    self._result = ProtocolAgreed(
                        protocol=line, remaining=self._lines.take_remaining()
                    )
                    return self._result
                else:
                    self._out += encode_line(NA)
        except MultistreamError:
            self.state = ResponderState.ERROR
            raise
        return NEED_DATA


__all__ = [
    "MULTISTREAM_ID",
    "MultistreamInitiator",
    "MultistreamResponder",
    "NeedData",
    "ProtocolAgreed",
    "ProtocolNotSupported",
    "ProtocolRejected",
]
