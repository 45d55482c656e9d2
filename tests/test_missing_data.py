"""Missing data: a test that needs darknet's reference data is skipped with one
reason line saying what to set, and the same test FAILS when $CI is set
(tests/conftest.py). Run as a separate pytest so this session's data stays."""

import os
import subprocess
import sys

from conftest import ROOT

NEEDS_REFDATA = "tests/test_weights.py::test_refdata_vectors_present"


def run_pytest(**env):
    full = {k: v for k, v in os.environ.items() if k != "CI"}
    full.update(env, OPENBLAS_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", NEEDS_REFDATA],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_missing_refdata_is_a_skip_with_its_reason(tmp_path):
    result = run_pytest(MINIDARK_REFDATA=str(tmp_path / "nowhere"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    reasons = [line for line in result.stdout.splitlines() if "skipped: darknet reference" in line]
    assert len(reasons) == 1, result.stdout
    assert str(tmp_path / "nowhere") in reasons[0] and "set MINIDARK_REFDATA" in reasons[0]


def test_missing_refdata_fails_under_ci(tmp_path):
    result = run_pytest(MINIDARK_REFDATA=str(tmp_path / "nowhere"), CI="true")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "CI is set: missing data is an error" in result.stdout
    assert "skipped" not in result.stdout.splitlines()[-1]
