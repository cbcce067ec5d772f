"""The documentation site builds with no broken link or reference, its configuration page is the one the
config files give, and every example runs."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]'; the test extra has it)")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    api = (tmp_path / "site" / "reference" / "api" / "compression" / "index.html").read_text()
    assert "merge_and_select" in api and "register_method" in api  # the API reference is built from the docstrings


def test_the_configuration_page_is_generated_from_the_config_files():
    from splitvit.config_keys import reference_markdown

    page = (ROOT / "docs" / "reference" / "configuration.md").read_text()
    assert page == reference_markdown(), "regenerate it: python -m splitvit.config_keys > docs/reference/configuration.md"


def test_every_key_has_a_meaning():
    from splitvit.config_keys import described

    d = described()
    bare = [k for k, (_, doc) in d["top"].items() if not doc]
    bare += [k for g in d["groups"].values() for o in g["options"].values() for k, (_, doc) in o["keys"].items()
             if not doc and not k.endswith((".name", ".kind"))]
    assert not bare, f"keys without a comment in their config file: {bare}"


def test_help_lists_every_key_with_its_meaning():
    out = subprocess.run([sys.executable, "-m", "splitvit", "train", "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "train.lr=0.0001    # Adam, both sides" in out
    assert "method=fedlite:" in out and "method.q=8    # sub-vectors per token" in out
    assert "codec: none, bf16, fp16, int2, int4, int8" in out


def test_the_examples_are_found():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_example_runs_in_smoke_mode(example):
    proc = subprocess.run([sys.executable, str(example), "--smoke"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip()


def test_the_results_tables_in_the_docs_are_what_the_committed_runs_give():
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "docs_tables.py"), "--check"], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 differ" in proc.stdout and not proc.stdout.startswith("0 generated")
