"""Yamux stream multiplexing, sans-IO."""

from shardroute.protocol.yamux.session import (
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

__all__ = [
    "DataReceived",
    "GoAwayReceived",
    "PingAcknowledged",
    "StreamClosed",
    "StreamEnded",
    "StreamOpened",
    "StreamReset",
    "WindowUpdated",
    "YamuxSession",
]
