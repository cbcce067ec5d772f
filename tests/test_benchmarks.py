"""Every benchmark script runs, in its smoke mode (tiny sizes, seconds), so that none can rot: the
numbers the docs quote come from their full runs (``make bench``). They start together, each on one
thread, and each test waits for its own."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parent.parent / "benchmarks").glob("*.py"))


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    runs = {}
    for script in BENCHMARKS:
        where = tmp_path_factory.mktemp(script.stem)
        out, err = (where / "stdout").open("w"), (where / "stderr").open("w")
        runs[script.stem] = (subprocess.Popen([sys.executable, str(script), "--smoke"], stdout=out, stderr=err,
                                              cwd=where, env=env), where)
    yield runs
    for proc, _ in runs.values():
        if proc.poll() is None:
            proc.kill()


def test_the_benchmarks_are_found():
    assert len(BENCHMARKS) >= 6


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.stem)
def test_benchmark_runs_in_smoke_mode(script, launched):
    proc, where = launched[script.stem]
    code = proc.wait(timeout=300)
    out, err = (where / "stdout").read_text(), (where / "stderr").read_text()
    assert code == 0, out[-2000:] + err[-3000:]
    assert out.strip(), "a benchmark prints its numbers"
