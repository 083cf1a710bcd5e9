from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import given
from hypothesis import strategies as st

from shardroute.errors import InvalidKey, InvalidPeerId
from shardroute.identity.keys import (
    EcdsaPublicKey,
    Ed25519PrivateKey,
    PublicKey,
    RsaPublicKey,
    Secp256k1PublicKey,
)
from shardroute.identity.keystore import KeystoreError, load_or_create_identity
from shardroute.identity.peer_id import PeerId

SEED = bytes.fromhex("7e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d")
ECDSA_PB = bytes.fromhex(
    "0803125b3059301306072a8648ce3d020106082a8648ce3d03010703420004de3d300fa36ae0e8f5d530899d83abab44"
    "abf3161f162a4bc901d8e6ecda020e8b6d5f8da30525e71d6851510c098e5c47c646a597fb4dcec034e9f77c409e62"
)


def test_ed25519_vectors() -> None:
    key = Ed25519PrivateKey.from_seed(SEED)
    assert key.to_protobuf().hex() == (
        "080112407e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d"
        "1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
    )
    peer = PeerId.from_public_key(key.public_key)
    assert (
        peer.raw.hex()
        == "0024080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
    )
    assert str(peer) == "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq"
    assert peer.to_cid() == "bafzaajaiaejcahwr5d5ofrfbis4l5d6uwr57hu5tjodrypfm6yaq6dsc2r2pzyt6"
    assert PeerId.parse(peer.to_cid()) == peer
    assert peer.extract_public_key() == key.public_key
    assert key.sign(b"noise-libp2p-static-key:" + bytes(range(32))).hex() == (
        "6748f6f4c32e36aa2ef8df283a99a76275a9358b224844c53ced6ae4789262d0"
        "0a86a6fe47a578ae243faa2a3ed9f4fd22d1bc38527f4797548e568ca43f500c"
    )
    assert Ed25519PrivateKey.from_protobuf(key.to_protobuf()).seed() == SEED


def test_other_key_types_give_the_spec_peer_ids() -> None:
    assert (
        str(PeerId.from_public_key(PublicKey.from_protobuf(ECDSA_PB)))
        == "QmVMT29id3TUASyfZZ6k9hmNyc2nYabCo4uMSpDw4zrgDk"
    )
    secp = PublicKey.from_protobuf(
        bytes.fromhex("08021221037777e994e452c21604f91de093ce415f5432f701dd8cd1a7a6fea0e630bfca99")
    )
    assert (
        str(PeerId.from_public_key(secp)) == "16Uiu2HAmLhLvBoYaoZfaMUKuibM6ac163GwKY74c5kiSLg5KvLpY"
    )
    assert PeerId.parse("12D3KooWLU2znyJMtDiHArqAGbZn8CgUGp92kxDBtefftEEaHSZS").raw.hex() == (
        "0024080112209e3b433cbd31c2b8a6ebbdca998bd0f4c2141c9c9af5422e976051b1e63af14d"
    )


def test_signatures_verify_for_all_four_types() -> None:
    message = b"noise-libp2p-static-key:" + os.urandom(32)
    ed = Ed25519PrivateKey.generate()
    assert ed.public_key.verify(message, ed.sign(message))
    assert not ed.public_key.verify(message + b"x", ed.sign(message))

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    rsa_pub = RsaPublicKey(der)
    sig = rsa_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    assert rsa_pub.verify(message, sig) and not rsa_pub.verify(b"other", sig)
    assert PublicKey.from_protobuf(rsa_pub.to_protobuf()) == rsa_pub
    assert PeerId.from_public_key(rsa_pub).raw[:2] == b"\x12\x20"  # hashed: more than 42 bytes

    for curve, cls in ((ec.SECP256K1(), Secp256k1PublicKey), (ec.SECP256R1(), EcdsaPublicKey)):
        private = ec.generate_private_key(curve)
        if cls is Secp256k1PublicKey:
            data = private.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
            )
        else:
            data = private.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        public = cls(data)
        sig = private.sign(message, ec.ECDSA(hashes.SHA256()))
        assert public.verify(message, sig) and not public.verify(message, b"\x30\x00")


def test_small_rsa_keys_are_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    der = small.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(InvalidKey):
        RsaPublicKey(der)


@given(st.binary(max_size=200))
def test_public_key_parser_fuzz(data: bytes) -> None:
    try:
        PublicKey.from_protobuf(data)
    except InvalidKey:
        pass


@given(st.binary(max_size=60))
def test_peer_id_parser_fuzz(data: bytes) -> None:
    try:
        PeerId.from_bytes(data)
    except InvalidPeerId:
        pass


@pytest.mark.parametrize("length", [0, 1, 2, 35])
def test_identity_peer_ids_too_short_for_a_key_are_refused(length: int) -> None:
    # Found by bench/fuzz.py peer_id: b"\x00\x00" was a peer ID whose CID text py-cid refuses.
    with pytest.raises(InvalidPeerId, match=r"outside 36\.\.42"):
        PeerId.from_bytes(bytes([0, length]) + bytes(length))


def test_the_shortest_inline_key_still_makes_a_peer_id() -> None:
    peer = PeerId.from_public_key(Ed25519PrivateKey.from_seed(bytes(32)).public_key)
    assert len(peer.raw) == 2 + 36
    assert PeerId.from_bytes(peer.raw) == peer == PeerId.parse(peer.to_cid())


def test_keystore_creates_0600_and_reuses(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    first = load_or_create_identity(data_dir)
    path = data_dir / "identity.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_identity(data_dir).seed() == first.seed()
    assert [p.name for p in data_dir.iterdir()] == ["identity.key"]  # no temp file left


def test_keystore_refuses_corrupt_or_exposed_files(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path)
    path = tmp_path / "identity.key"
    original = path.read_bytes()
    path.chmod(0o644)
    with pytest.raises(KeystoreError, match="readable by others"):
        load_or_create_identity(tmp_path)
    path.chmod(0o600)
    path.write_bytes(b"garbage")
    with pytest.raises(KeystoreError):
        load_or_create_identity(tmp_path)
    assert path.read_bytes() == b"garbage"  # never silently replaced
    path.write_bytes(original)
