"""How a command ends: one exit-code table for the whole CLI, and errors that say so in the
form the caller asked for (a line for people, a JSON object on stderr under --json)."""

from __future__ import annotations

import enum
import json
import sys

import grpc


class Exit(enum.IntEnum):
    OK = 0
    FAILED = 1  # the node tried and could not (an error on its side)
    USAGE = 2  # a bad command line or input; nothing was sent or changed
    UNREACHABLE = 3  # no node answers at the gRPC address
    NOT_FOUND = 4  # nothing found: no provider, too few shards covered, no value
    TIMEOUT = 5  # the lookup or the deadline ran out first


EXIT_TABLE = (
    "exit codes: 0 ok; 1 the operation failed; 2 bad usage or input (nothing was sent); "
    "3 the node is unreachable; 4 nothing found; 5 timed out"
)

SERVE_EXIT_TABLE = (
    "exit codes: 0 stopped by SIGINT or SIGTERM; 1 did not start or stopped on an error (one "
    "line on stderr says why: a setting, the data folder, its database, a port, the API's "
    "credentials); 2 bad command line"
)

_BY_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: Exit.USAGE,
    grpc.StatusCode.NOT_FOUND: Exit.NOT_FOUND,
    grpc.StatusCode.DEADLINE_EXCEEDED: Exit.TIMEOUT,
}


class CliError(Exception):
    """A command that ends with `code`; `message` says why, in a sentence."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def from_rpc(exc: grpc.RpcError, target: str) -> CliError:
    """The CLI's reading of a gRPC failure."""
    status = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else None) or str(status)
    if status is grpc.StatusCode.UNAVAILABLE and "connect" in details.lower():
        return unreachable(target)
    return CliError(_BY_STATUS.get(status, Exit.FAILED), f"{details} ({status.name})")


def unreachable(target: str) -> CliError:
    return CliError(
        Exit.UNREACHABLE,
        f"no shardroute node answers at {target}: start one with `shardroute serve`, or point "
        "--grpc (or SHARDROUTE_GRPC) at the node's gRPC address; a node that serves TLS needs "
        "--tls-ca, and --tls-cert/--tls-key if it asks for client certificates",
    )


def report(command: str, error: CliError, *, as_json: bool) -> int:
    """Print `error` on stderr; returns its exit code."""
    if as_json:
        body = {"error": error.message, "exit": int(error.code), "reason": error.code.name}
        print(json.dumps({"command": command, **body}), file=sys.stderr)
    else:
        print(f"shardroute {command}: {error.message}", file=sys.stderr)
    return int(error.code)
