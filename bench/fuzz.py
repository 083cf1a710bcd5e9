"""Coverage-guided fuzzing of shardroute's wire parsers with atheris (libFuzzer).

    python -m bench.fuzz varint --runs 1000000          one parser, a million executions
    python -m bench.fuzz all --seconds 60               every parser in turn, a minute each
    python -m bench.fuzz report                         docs/benchmarks.md from saved results
    python -m bench.fuzz cid --replay crash-…           rerun saved inputs, with a traceback

One runner for every parser, not a file each: the harnesses differ only in their function and
seeds (bench/fuzz_targets.py), while running libFuzzer, seeding the corpus, reading its
statistics and judging crashes is the same work thirteen times.

Each parser runs in a child process: libFuzzer owns the process it fuzzes (it exits when done
and on a crash), and instrumentation must be in place before shardroute is imported. The
parent reads libFuzzer's statistics, keeps the log, and exits 1 if the child crashed, hung
(an input running longer than --timeout seconds) or ran out of memory. Work files go under
--workdir (default .fuzz/): <parser>/corpus, <parser>/artifacts (crash-*, timeout-*, oom-*),
<parser>/log.txt and <parser>/result.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Instrumented for coverage: our parsers and the pure-Python multiformats code under them.
INSTRUMENTED = ["shardroute", "multiaddr", "cid", "multihash", "multibase", "multicodec", "base58"]
# Every harness, in the order reports list them (kept here so the parent never imports them).
PARSERS = [
    "varint",
    "multistream",
    "noise_handshake",
    "noise_transport",
    "yamux_frames",
    "yamux_session",
    "identify",
    "kad",
    "records",
    "ipns",
    "cid",
    "multiaddr",
    "peer_id",
]
ARTIFACT_PREFIXES = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")


@dataclass
class Result:
    parser: str
    executions: int
    seconds: float
    cpu_seconds: float  # the child's user+system time: the machine may be shared
    exec_per_second: int
    exec_per_cpu_second: int
    coverage: int  # libFuzzer "cov": instrumented edges reached
    features: int  # libFuzzer "ft"
    corpus: int
    artifacts: list[str]
    returncode: int

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.artifacts


def _worker(parser: str, corpus: Path, libfuzzer_args: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=INSTRUMENTED):
        from bench.fuzz_targets import TARGETS
    target = TARGETS[parser]
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(target.seeds()):
        (corpus / f"seed-{i:03d}").write_bytes(seed)
    args = [f"-max_len={target.max_len}", *libfuzzer_args, str(corpus)]
    atheris.Setup([sys.argv[0], *args], target.one_input)
    atheris.Fuzz()


def _last_int(pattern: str, text: str) -> int:
    found = re.findall(pattern, text)
    return int(found[-1]) if found else 0


def run(
    parser: str, *, runs: int, seconds: int, workdir: Path, timeout: int, quiet: bool = False
) -> Result:
    base = workdir / parser
    artifacts = base / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    for old in artifacts.iterdir():
        old.unlink()
    args = [
        f"-runs={runs}",
        f"-timeout={timeout}",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
        "-rss_limit_mb=2048",
    ]
    if seconds:
        args.append(f"-max_total_time={seconds}")
    cmd = [sys.executable, "-m", "bench.fuzz", "_worker", parser, str(base / "corpus"), *args]
    started = time.monotonic()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    log = proc.stdout + proc.stderr
    (base / "log.txt").write_text(log)
    executions = _last_int(r"stat::number_of_executed_units:\s*(\d+)", log)
    # libFuzzer's own rate divides by whole seconds; wall time (start-up included) is exact.
    fuzz_seconds = max(elapsed, 0.001)
    result = Result(
        parser=parser,
        executions=executions,
        seconds=round(elapsed, 1),
        cpu_seconds=round(cpu, 1),
        exec_per_second=round(executions / fuzz_seconds),
        exec_per_cpu_second=round(executions / max(cpu, 0.001)),
        coverage=_last_int(r"cov: (\d+)", log),
        features=_last_int(r"ft: (\d+)", log),
        corpus=_last_int(r"corp: (\d+)", log),
        artifacts=sorted(
            p.name for p in artifacts.iterdir() if p.name.startswith(ARTIFACT_PREFIXES)
        ),
        returncode=proc.returncode,
    )
    (base / "result.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    if not quiet:
        print(json.dumps(asdict(result)))
        if not result.ok:
            print(log[-6000:], file=sys.stderr)
    return result


def report(workdir: Path) -> str:
    rows = []
    short: list[str] = []
    for parser in PARSERS:
        path = workdir / parser / "result.json"
        if not path.exists():
            continue
        r = Result(**json.loads(path.read_text()))
        crashes = sum(a.startswith(("crash-", "oom-", "leak-")) for a in r.artifacts)
        hangs = sum(a.startswith(("timeout-", "slow-unit-")) for a in r.artifacts)
        if r.executions < 1_000_000:
            short.append(f"{r.parser} ({r.exec_per_cpu_second:,} exec/CPU-s)")
        rows.append(
            f"| {r.parser} | {r.executions:,} | {r.seconds:,.0f} | {r.cpu_seconds:,.0f} | "
            f"{r.exec_per_second:,} | {r.exec_per_cpu_second:,} | "
            f"{r.coverage:,} | {r.features:,} | {r.corpus:,} | {crashes} | {hangs} |"
        )
    return (
        "Script: `bench/fuzz.py` (harnesses in `bench/fuzz_targets.py`), atheris on libFuzzer,\n"
        "one parser at a time under `nice -n 19`, starting from the seed corpus each harness\n"
        "writes with shardroute's own encoders. Coverage is libFuzzer's count of instrumented\n"
        "edges (`cov`) and features (`ft`) over shardroute and the pure-Python multiformats\n"
        "packages. A crash is any exception other than the parser's own error, or a failed\n"
        "check; a hang is an input running over 10 s.\n\n"
        "| parser | executions | wall s | CPU s | exec/s (wall) | exec/CPU-s | cov | ft | corpus "
        "| crashes | hangs |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\n"
        + (
            "Stopped by the time cap before 10^6 executions: " + ", ".join(short) + ".\n"
            if short
            else ""
        )
        + "Wall and CPU seconds include the child's start-up (imports, instrumentation, seeds).\n"
        "exec/CPU-s is the harness's own speed; exec/s (wall) also says how busy the machine\n"
        "was. Found by these harnesses and fixed (each with a regression test): identify\n"
        "handing out bytes for non-UTF-8 proto2 strings; `ContentId.from_bytes` refusing a\n"
        "binary CIDv0; `parse_multiaddr` writing `/p2p/<CID>` as the CID's bytes rather than\n"
        "the multihash, and accepting text whose printed form reads back as other bytes\n"
        '(`/unix/tmp%2F/tmk`); identity peer IDs too short to hold a key (`b"\\x00\\x00"`);\n'
        "py-cid's CIDv0 of a multihash other than sha2-256 (`qkpa1bmjrq`)."
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        _worker(argv[1], Path(argv[2]), argv[3:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("parser", choices=[*PARSERS, "all", "report"])
    ap.add_argument("--runs", type=int, default=1_000_000, help="executions (libFuzzer -runs)")
    ap.add_argument("--seconds", type=int, default=0, help="time cap per parser, 0 for none")
    ap.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    ap.add_argument("--workdir", type=Path, default=ROOT / ".fuzz")
    ap.add_argument("--write-doc", action="store_true", help="with report: update the doc")
    ap.add_argument("--replay", type=Path, nargs="+", help="run these inputs once, uninstrumented")
    args = ap.parse_args(argv)
    if args.replay:
        from bench.fuzz_targets import TARGETS

        for path in args.replay:
            TARGETS[args.parser].one_input(path.read_bytes())
            print(f"{path}: no crash")
        return 0
    if args.parser == "report":
        body = report(args.workdir)
        print(body)
        if args.write_doc:
            from bench.common import write_section

            write_section("Fuzzing the wire parsers (issue 12)", body)
        return 0
    parsers = PARSERS if args.parser == "all" else [args.parser]
    results = [
        run(p, runs=args.runs, seconds=args.seconds, workdir=args.workdir, timeout=args.timeout)
        for p in parsers
    ]
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
