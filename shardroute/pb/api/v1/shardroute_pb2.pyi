from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_SERVER: _ClassVar[Mode]
    MODE_CLIENT: _ClassVar[Mode]
MODE_UNSPECIFIED: Mode
MODE_SERVER: Mode
MODE_CLIENT: Mode

class Shard(_message.Message):
    __slots__ = ("cid", "sha256")
    CID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    cid: str
    sha256: bytes
    def __init__(self, cid: _Optional[str] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class AnnounceRequest(_message.Message):
    __slots__ = ("shards", "wait")
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedCompositeFieldContainer[Shard]
    wait: bool
    def __init__(self, shards: _Optional[_Iterable[_Union[Shard, _Mapping]]] = ..., wait: _Optional[bool] = ...) -> None: ...

class AnnounceResponse(_message.Message):
    __slots__ = ("announced", "stored_on", "cids")
    ANNOUNCED_FIELD_NUMBER: _ClassVar[int]
    STORED_ON_FIELD_NUMBER: _ClassVar[int]
    CIDS_FIELD_NUMBER: _ClassVar[int]
    announced: int
    stored_on: int
    cids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, announced: _Optional[int] = ..., stored_on: _Optional[int] = ..., cids: _Optional[_Iterable[str]] = ...) -> None: ...

class WithdrawRequest(_message.Message):
    __slots__ = ("shards",)
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedCompositeFieldContainer[Shard]
    def __init__(self, shards: _Optional[_Iterable[_Union[Shard, _Mapping]]] = ...) -> None: ...

class WithdrawResponse(_message.Message):
    __slots__ = ("withdrawn",)
    WITHDRAWN_FIELD_NUMBER: _ClassVar[int]
    withdrawn: int
    def __init__(self, withdrawn: _Optional[int] = ...) -> None: ...

class Provider(_message.Message):
    __slots__ = ("peer_id", "addrs")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRS_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    addrs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, peer_id: _Optional[str] = ..., addrs: _Optional[_Iterable[str]] = ...) -> None: ...

class FindProvidersRequest(_message.Message):
    __slots__ = ("shard", "count")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    shard: Shard
    count: int
    def __init__(self, shard: _Optional[_Union[Shard, _Mapping]] = ..., count: _Optional[int] = ...) -> None: ...

class LocateRequest(_message.Message):
    __slots__ = ("shards", "need", "providers_per_shard")
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    NEED_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_PER_SHARD_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedCompositeFieldContainer[Shard]
    need: int
    providers_per_shard: int
    def __init__(self, shards: _Optional[_Iterable[_Union[Shard, _Mapping]]] = ..., need: _Optional[int] = ..., providers_per_shard: _Optional[int] = ...) -> None: ...

class ShardProvider(_message.Message):
    __slots__ = ("cid", "index", "provider")
    CID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    cid: str
    index: int
    provider: Provider
    def __init__(self, cid: _Optional[str] = ..., index: _Optional[int] = ..., provider: _Optional[_Union[Provider, _Mapping]] = ...) -> None: ...

class GetClosestPeersRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class GetClosestPeersResponse(_message.Message):
    __slots__ = ("peers", "requests", "rounds")
    PEERS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[Provider]
    requests: int
    rounds: int
    def __init__(self, peers: _Optional[_Iterable[_Union[Provider, _Mapping]]] = ..., requests: _Optional[int] = ..., rounds: _Optional[int] = ...) -> None: ...

class PutValueRequest(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class PutValueResponse(_message.Message):
    __slots__ = ("stored_on",)
    STORED_ON_FIELD_NUMBER: _ClassVar[int]
    stored_on: int
    def __init__(self, stored_on: _Optional[int] = ...) -> None: ...

class GetValueRequest(_message.Message):
    __slots__ = ("key", "quorum")
    KEY_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    quorum: int
    def __init__(self, key: _Optional[bytes] = ..., quorum: _Optional[int] = ...) -> None: ...

class GetValueResponse(_message.Message):
    __slots__ = ("found", "value")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    found: bool
    value: bytes
    def __init__(self, found: _Optional[bool] = ..., value: _Optional[bytes] = ...) -> None: ...

class GetNodeInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetModeRequest(_message.Message):
    __slots__ = ("mode",)
    MODE_FIELD_NUMBER: _ClassVar[int]
    mode: Mode
    def __init__(self, mode: _Optional[_Union[Mode, str]] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("peer_id", "addrs", "mode", "protocol", "routing_table_size", "stored_records", "announced_records", "agent_version", "connections", "published_shards", "publish_lookups", "republish_backlog")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    ROUTING_TABLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    STORED_RECORDS_FIELD_NUMBER: _ClassVar[int]
    ANNOUNCED_RECORDS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_SHARDS_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    REPUBLISH_BACKLOG_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    addrs: _containers.RepeatedScalarFieldContainer[str]
    mode: Mode
    protocol: str
    routing_table_size: int
    stored_records: int
    announced_records: int
    agent_version: str
    connections: int
    published_shards: int
    publish_lookups: int
    republish_backlog: int
    def __init__(self, peer_id: _Optional[str] = ..., addrs: _Optional[_Iterable[str]] = ..., mode: _Optional[_Union[Mode, str]] = ..., protocol: _Optional[str] = ..., routing_table_size: _Optional[int] = ..., stored_records: _Optional[int] = ..., announced_records: _Optional[int] = ..., agent_version: _Optional[str] = ..., connections: _Optional[int] = ..., published_shards: _Optional[int] = ..., publish_lookups: _Optional[int] = ..., republish_backlog: _Optional[int] = ...) -> None: ...

class ListRoutingTableRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RoutingPeer(_message.Message):
    __slots__ = ("peer_id", "addrs", "bucket", "last_seen_seconds_ago")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRS_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_SECONDS_AGO_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    addrs: _containers.RepeatedScalarFieldContainer[str]
    bucket: int
    last_seen_seconds_ago: float
    def __init__(self, peer_id: _Optional[str] = ..., addrs: _Optional[_Iterable[str]] = ..., bucket: _Optional[int] = ..., last_seen_seconds_ago: _Optional[float] = ...) -> None: ...

class ListRoutingTableResponse(_message.Message):
    __slots__ = ("peers",)
    PEERS_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[RoutingPeer]
    def __init__(self, peers: _Optional[_Iterable[_Union[RoutingPeer, _Mapping]]] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("multiaddr",)
    MULTIADDR_FIELD_NUMBER: _ClassVar[int]
    multiaddr: str
    def __init__(self, multiaddr: _Optional[str] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("peer_id", "dht_server")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    DHT_SERVER_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    dht_server: bool
    def __init__(self, peer_id: _Optional[str] = ..., dht_server: _Optional[bool] = ...) -> None: ...
