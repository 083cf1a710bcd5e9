"""Each fuzz harness runs briefly under atheris and must end without a crash or a hang.

The long campaigns are `python -m bench.fuzz <parser>` (docs/benchmarks.md); this keeps every
harness runnable and catches what a few seconds of mutation from the seeds can find. Budget:
20,000 executions or 3 s of fuzzing per parser, whichever comes first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.fuzz import PARSERS, run

RUNS = 20_000
SECONDS = 3


@pytest.mark.parametrize("parser", PARSERS)
def test_harness_runs_clean(parser: str, tmp_path: Path) -> None:
    result = run(parser, runs=RUNS, seconds=SECONDS, workdir=tmp_path, timeout=10, quiet=True)
    log = (tmp_path / parser / "log.txt").read_text()
    assert result.ok, f"{parser}: rc {result.returncode}, {result.artifacts}\n{log[-4000:]}"
    # The harness ran past its seeds and reached instrumented code.
    assert result.executions > len(list((tmp_path / parser / "corpus").glob("seed-*")))
    assert result.coverage > 0
