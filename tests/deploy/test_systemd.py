"""deploy/systemd through systemd's own tools in a temporary root: sysusers makes the account,
tmpfiles the folders and the shipped settings, `systemd-analyze verify` finds nothing to say
about the unit, and the command it starts is a real `shardroute serve` whose settings load."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shardroute.cli import build_parser
from tests.support.ops import tool
from tests.support.serve import serve

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy/systemd"
SHIPPED_CONFIG = ROOT / "config/shardroute.toml"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((SYSTEMD / "shardroute.service").read_text())
    return parser


def exec_start() -> list[str]:
    return shlex.split(unit()["Service"]["ExecStart"])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A file-system root holding systemd's own units, ours installed as the files' first lines
    say, and the venv's real `shardroute` at the unit's ExecStart."""
    root = tmp_path / "root"
    units = root / "usr/lib/systemd/system"
    shutil.copytree("/usr/lib/systemd/system", units, symlinks=True)
    shutil.copy(SYSTEMD / "shardroute.service", units / "shardroute.service")
    for kind in ("sysusers", "tmpfiles"):
        (root / f"usr/lib/{kind}.d").mkdir(parents=True)
        shutil.copy(SYSTEMD / f"shardroute.{kind}", root / f"usr/lib/{kind}.d/shardroute.conf")
    (root / "etc").mkdir()
    (root / "usr/share/shardroute").mkdir(parents=True)
    shutil.copy(SHIPPED_CONFIG, root / "usr/share/shardroute/shardroute.toml")
    binary = root / exec_start()[0].lstrip("/")
    binary.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(sys.executable).parent / "shardroute", binary)
    return root


def test_systemd_analyze_verify_finds_nothing_wrong_with_the_unit(root: Path) -> None:
    done = subprocess.run(
        [tool("systemd-analyze"), "verify", f"--root={root}", "shardroute.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
        done.stdout + done.stderr
    )


def test_sysusers_and_tmpfiles_make_the_account_folders_and_settings_the_unit_uses(
    root: Path,
) -> None:
    for command in (
        [tool("systemd-sysusers"), f"--root={root}"],
        [tool("systemd-tmpfiles"), f"--root={root}", "--create"],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    service = unit()["Service"]
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc/passwd").read_text().splitlines()
    }
    assert service["User"] in passwd
    uid, gid = int(passwd[service["User"]][2]), int(passwd[service["User"]][3])
    args = build_parser().parse_args(exec_start()[1:])
    assert args.command == "serve"
    data = root / str(args.data_dir).lstrip("/")
    assert (data.stat().st_uid, data.stat().st_gid) == (uid, gid)
    assert data.stat().st_mode & 0o777 == 0o750  # the identity key is in there
    assert f"/var/lib/{service['StateDirectory']}" == args.data_dir
    config = root / str(args.config).lstrip("/")
    assert config.read_bytes() == SHIPPED_CONFIG.read_bytes()
    assert config.stat().st_uid == 0 and config.stat().st_mode & 0o022 == 0


@pytest.mark.network
def test_the_shipped_settings_start_a_node(tmp_path: Path) -> None:
    """The unit's command line with the shipped file; only the ports move to free loopback ones."""
    args = build_parser().parse_args(exec_start()[1:])
    assert str(args.config) == "/etc/shardroute/shardroute.toml"
    with serve(tmp_path / "node", "--config", str(SHIPPED_CONFIG)) as node:
        assert node.cli("status").returncode == 0
        assert node.cli("health").returncode == 0  # no bootstrap peers: serving at once
