"""Between the API's protobuf messages and shardroute's domain values. Every refusal names the
field and the problem, for an INVALID_ARGUMENT status."""

from __future__ import annotations

from collections.abc import Sequence

from shardroute.content import ContentId
from shardroute.errors import InvalidCid, InvalidPeerId, ShardrouteError
from shardroute.identity.peer_id import PeerId
from shardroute.kad.messages import PeerInfo
from shardroute.pb.api.v1 import shardroute_pb2 as pb


class BadRequest(ShardrouteError):
    """A request the API refuses with INVALID_ARGUMENT; nothing was changed."""


def shard_to_cid(shard: pb.Shard, where: str) -> ContentId:
    kind = shard.WhichOneof("id")
    if kind == "cid":
        try:
            return ContentId.parse(shard.cid)
        except InvalidCid as exc:
            raise BadRequest(f"{where}: {exc}") from None
    if kind == "sha256":
        if len(shard.sha256) != 32:
            raise BadRequest(
                f"{where}: a shard hash is 32 bytes of SHA-256, got {len(shard.sha256)}"
            )
        return ContentId.from_shard_hash(shard.sha256)
    raise BadRequest(f"{where}: neither a cid nor a sha256 is set")


def shards_to_cids(shards: Sequence[pb.Shard], field: str, limit: int) -> list[ContentId]:
    if not shards:
        raise BadRequest(f"{field}: empty; give at least one shard")
    if len(shards) > limit:
        raise BadRequest(f"{field}: {len(shards)} shards exceed the batch limit of {limit}")
    return [shard_to_cid(s, f"{field}[{i}]") for i, s in enumerate(shards)]


def provider(info: PeerInfo) -> pb.Provider:
    return pb.Provider(peer_id=str(info.peer_id), addrs=[str(a) for a in info.addrs])


def key_bytes(text: str) -> bytes:
    """The DHT key of `closest KEY`: a peer ID's bytes or a CID's multihash."""
    try:
        return PeerId.parse(text).raw
    except InvalidPeerId:
        pass
    try:
        return ContentId.parse(text).dht_key
    except InvalidCid:
        raise BadRequest(f"key: {text!r} is neither a peer ID nor a CID") from None
