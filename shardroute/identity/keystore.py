"""Our identity key on disk: made on first start, mode 0600, reused on every restart."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from shardroute.errors import InvalidKey, ShardrouteError
from shardroute.identity.keys import Ed25519PrivateKey

IDENTITY_FILE = "identity.key"


class KeystoreError(ShardrouteError):
    """The identity file exists but cannot be used safely."""


def load_or_create_identity(data_dir: Path) -> Ed25519PrivateKey:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / IDENTITY_FILE
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise KeystoreError(
                f"{path} is readable by others (mode {mode:o}); fix it with `chmod 600 {path}`"
            )
        try:
            return Ed25519PrivateKey.from_protobuf(path.read_bytes())
        except InvalidKey as exc:
            raise KeystoreError(
                f"{path} does not hold a usable Ed25519 key ({exc}); not replacing it"
            ) from exc
    key = Ed25519PrivateKey.generate()
    tmp = path.with_name(f".{IDENTITY_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.to_protobuf())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return key
