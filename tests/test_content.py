from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardroute.content import ContentId
from shardroute.errors import InvalidCid

HELLO = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"


def test_hello_world_raw_block() -> None:
    cid = ContentId.from_shard_hash(bytes.fromhex(HELLO))
    assert str(cid) == "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
    assert cid.dht_key.hex() == "1220" + HELLO
    assert ContentId.parse("zb2rhj7crUKTQYRGCRATFaQ6YFLTde2YzdqbbhAASkL9uRDXn") == cid
    assert ContentId.parse_cid_or_hash(HELLO) == cid
    assert ContentId.parse_cid_or_hash(HELLO.upper()) == cid


def test_v0_v1_and_codecs_share_a_dht_key() -> None:
    v1 = ContentId.parse("bafybeihfg3d7rdltd43u3tfvncx7n5loqofbsobojcadtmokrljfthuc7y")
    v0 = ContentId.parse("QmdmQXB2mzChmMeKY47C43LxUdg1NDJ5MWcKMKxDu7RgQm")
    raw = ContentId.parse("bafkreihfg3d7rdltd43u3tfvncx7n5loqofbsobojcadtmokrljfthuc7y")
    assert v1.dht_key == v0.dht_key == raw.dht_key
    assert str(v0.to_v1()) == str(v1)
    assert str(v0) == "QmdmQXB2mzChmMeKY47C43LxUdg1NDJ5MWcKMKxDu7RgQm"


def test_shard_example_in_every_base() -> None:
    text = "bafkreidc53xtcjg4a5d2xx7gfsdbjiwxe3fdj6uoi7zh3npawqhh5tahea"
    cid = ContentId.parse(text)
    assert cid.shard_hash is not None and cid.shard_hash.hex().startswith("62eeef31")
    assert ContentId.parse("k2cwueb468l5bcxwedfnm4cwlaqlkfl6et6gz6ftwzfppptsgdallwyo") == cid
    assert ContentId.parse("B" + text[1:].upper()) == cid
    assert ContentId.parse("f" + cid.to_bytes().hex()) == cid


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "bAFKREI",
        "b" + "a" * 10,
        "f01551220ab",
        "zzz0OIl",
        "ab" * 32 + "0",
        "f" + "12" + "20" + "00" * 32,
    ],
)
def test_bad_cids_are_refused(text: str) -> None:
    with pytest.raises(InvalidCid):
        ContentId.parse_cid_or_hash(text)


def test_binary_v0_round_trips() -> None:
    # Found by bench/fuzz.py cid: from_bytes refused the bytes to_bytes writes for a CIDv0.
    v0 = ContentId.parse("QmNLfbof5rLekrACjeuLk9JmGZD2HDBHCU4z16iYKmx5SE")
    assert v0.version == 0 and v0.to_bytes() == v0.multihash
    assert ContentId.from_bytes(v0.to_bytes()) == v0
    v1 = v0.to_v1()
    assert ContentId.from_bytes(v1.to_bytes()) == v1


def test_a_v0_that_is_not_sha2_256_is_refused() -> None:
    # Found by bench/fuzz.py cid: py-cid read this as a CIDv0 of a 6-byte multihash.
    with pytest.raises(InvalidCid, match="CIDv0 must be a sha2-256"):
        ContentId.parse("qkpa1bmjrq")


def test_wrong_shard_hash_length() -> None:
    with pytest.raises(InvalidCid):
        ContentId.from_shard_hash(b"\x00" * 31)


@given(st.binary(max_size=80))
def test_binary_fuzz(data: bytes) -> None:
    try:
        ContentId.from_bytes(data)
    except InvalidCid:
        pass


@given(st.text(max_size=80))
def test_text_fuzz(text: str) -> None:
    try:
        ContentId.parse_cid_or_hash(text)
    except InvalidCid:
        pass


# -- the fast paths agree with the libraries -------------------------------------------------

BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


def library_parse(text: str) -> ContentId | None:
    """What py-cid (with py-multihash) makes of `text`, bypassing every fast path."""
    import cid as pycid

    try:
        return ContentId._from_library(pycid.make_cid(text))
    except (ValueError, TypeError, KeyError, InvalidCid):
        return None


def fast_or_none(text: str) -> ContentId | None:
    from shardroute.content import _fast_canonical

    return _fast_canonical(text)


@given(st.binary(min_size=32, max_size=32), st.sampled_from([0x55, 0x70, 0x71, 0x72, 0x0129]))
def test_canonical_text_is_what_py_cid_prints_and_reads(digest: bytes, codec: int) -> None:
    import cid as pycid
    from multicodec.constants import CODE_TABLE

    ours = ContentId(1, codec, b"\x12\x20" + digest)
    theirs = pycid.CIDv1(CODE_TABLE[codec], b"\x12\x20" + digest).encode("base32").decode()
    assert str(ours) == theirs
    assert ContentId.parse(theirs) == ours == library_parse(theirs)


@given(st.text(alphabet=BASE32, min_size=58, max_size=58))
def test_the_fast_parse_never_accepts_what_the_library_would_not(body: str) -> None:
    text = "b" + body
    theirs = library_parse(text)
    fast = fast_or_none(text)
    if fast is not None:
        assert fast == theirs
    if theirs is None:
        with pytest.raises(InvalidCid):
            ContentId.parse(text)
    else:
        assert ContentId.parse(text) == theirs


@given(st.text(min_size=1, max_size=80))
def test_any_text_parses_or_is_an_invalid_cid(text: str) -> None:
    try:
        parsed = ContentId.parse(text)
    except InvalidCid:
        return
    assert parsed == library_parse(text.strip())
