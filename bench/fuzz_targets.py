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

from collections.abc import Callable
from dataclasses import dataclass

from bench.fuzz_fixtures import ID_I, ID_R, NOW, PEER_I, PEER_R
from bench.fuzz_targets_framing import (
    MS_PROPOSALS,
    MS_SUPPORTED,
    fuzz_multistream,
    fuzz_varint,
    seeds_multistream,
    seeds_varint,
)
from bench.fuzz_targets_identify import FULL_INFO, fuzz_identify, seeds_identify
from bench.fuzz_targets_kad import (
    IPNS_KEY,
    IPNS_VALUE,
    VALIDATOR,
    fuzz_ipns,
    fuzz_kad,
    fuzz_records,
    seeds_ipns,
    seeds_kad,
    seeds_records,
)
from bench.fuzz_targets_multiformats import (
    fuzz_cid,
    fuzz_multiaddr,
    fuzz_peer_id,
    seeds_cid,
    seeds_multiaddr,
    seeds_peer_id,
)
from bench.fuzz_targets_noise import (
    fuzz_noise_handshake,
    fuzz_noise_transport,
    seeds_noise_handshake,
    seeds_noise_transport,
)
from bench.fuzz_targets_yamux import (
    fuzz_yamux_frames,
    fuzz_yamux_session,
    seeds_yamux_frames,
    seeds_yamux_session,
)
from shardroute.errors import (
    InvalidCid,
    InvalidKey,
    InvalidPeerId,
    InvalidRecord,
    KadMessageError,
    MessageTooLarge,
    MultistreamError,
    NoiseError,
    VarintError,
    YamuxError,
)
from shardroute.kad import cbor
from shardroute.protocol.identify import IdentifyError

# The harnesses and their fixed inputs, still importable from here.
__all__ = [
    "FULL_INFO",
    "ID_I",
    "ID_R",
    "IPNS_KEY",
    "IPNS_VALUE",
    "MS_PROPOSALS",
    "MS_SUPPORTED",
    "NOW",
    "PEER_I",
    "PEER_R",
    "TARGETS",
    "VALIDATOR",
    "Target",
    "fuzz_cid",
    "fuzz_identify",
    "fuzz_ipns",
    "fuzz_kad",
    "fuzz_multiaddr",
    "fuzz_multistream",
    "fuzz_noise_handshake",
    "fuzz_noise_transport",
    "fuzz_peer_id",
    "fuzz_records",
    "fuzz_varint",
    "fuzz_yamux_frames",
    "fuzz_yamux_session",
    "seeds_cid",
    "seeds_identify",
    "seeds_ipns",
    "seeds_kad",
    "seeds_multiaddr",
    "seeds_multistream",
    "seeds_noise_handshake",
    "seeds_noise_transport",
    "seeds_peer_id",
    "seeds_records",
    "seeds_varint",
    "seeds_yamux_frames",
    "seeds_yamux_session",
]


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    one_input: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    allowed: tuple[type[Exception], ...]
    about: str
    max_len: int = 4096  # libFuzzer -max_len: longer inputs only slow the harness down


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
