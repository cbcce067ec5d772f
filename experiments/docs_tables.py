"""The results tables of the docs, remade from the committed run files.

A table in a docs page between

    <!-- splitvit report DIR... [key=value ...] (table N) -->
    | ... the table ... |
    <!-- end of generated table -->

is the N-th table (from 1) of what ``splitvit report DIR... out=TMP`` writes now (``report.md``, then
``energy.md`` when an ``energy.device=`` asks for it); one after
``<!-- python experiments/SCRIPT.py DIR (table N) -->`` is the N-th table of the ``report.md`` the script
writes into a copy of ``DIR`` (the run files only), or else of what it prints. ``(table N, rows matching REGEX)`` keeps the header and
the rows a Python regular expression finds. One after ``<!-- copy of FILE (table N) -->`` is the N-th table
of a committed report whose runs were not kept (the file says so). This script remakes each such table, in
the README and every docs page, and writes it in; with ``--check`` it only says which tables differ from
what the run files give (a test runs it so).

    python experiments/docs_tables.py [--check]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from splitvit.report import main as report

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- (?P<args>(?:splitvit report|python experiments/\S+\.py|copy of) .+?) "
                   r"\(table (?P<n>\d+)(?:, rows matching (?P<rows>.+?))?\) -->\n)"
                   r"(?P<table>.*?)(?P<end><!-- end of generated table -->)", re.S)
RUN_FILES = ("summary.json", "metrics.jsonl", "config.yaml")


def tables(markdown: str) -> list[str]:
    """The markdown tables of a page, in order, each as its lines joined."""
    out, current = [], []
    for line in markdown.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            out.append("\n".join(current) + "\n")
            current = []
    if current:
        out.append("\n".join(current) + "\n")
    return out


def render(command: str, n: int, cache: dict[str, list[str]], rows: str | None = None) -> str:
    if command not in cache:
        words = shlex.split(command)
        with tempfile.TemporaryDirectory() as tmp:
            if words[:2] == ["copy", "of"]:
                cache[command] = tables((ROOT / words[2]).read_text())
                return select(cache[command][n - 1], rows)
            if words[:2] == ["splitvit", "report"]:
                with contextlib.redirect_stdout(io.StringIO()):
                    code = report([*words[2:], f"out={tmp}", "plots=false"])
                if code:
                    raise SystemExit(f"{command} failed ({code})")
                cache[command] = [t for f in ("report.md", "energy.md") if (Path(tmp) / f).exists()
                                  for t in tables((Path(tmp) / f).read_text())]
                return select(cache[command][n - 1], rows)
            else:  # a script that writes report.md into the folder it reads: run it on a copy of the run files
                source = ROOT / words[2]
                copy = Path(tmp) / words[2]
                for f in source.rglob("*"):
                    if f.name in RUN_FILES:
                        (copy / f.parent.relative_to(source)).mkdir(parents=True, exist_ok=True)
                        shutil.copy(f, copy / f.relative_to(source))
                done = subprocess.run([sys.executable, str(ROOT / words[1]), str(copy)], capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"{command} failed ({done.returncode}): {done.stderr[-2000:]}")
                out = copy / "report.md"  # a script writes report.md there, or prints its tables
                cache[command] = tables(out.read_text() if out.exists() else done.stdout)
    return select(cache[command][n - 1], rows)


def select(table: str, rows: str | None) -> str:
    """The table's header, separator and the rows ``rows`` (a regular expression) finds; all rows if None."""
    if rows is None:
        return table
    lines = table.splitlines()
    return "\n".join(lines[:2] + [line for line in lines[2:] if re.search(rows, line)]) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs")
    args = ap.parse_args()
    cache: dict[str, list[str]] = {}
    stale, found = [], 0
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = page.read_text()

        def fill(m: re.Match) -> str:
            nonlocal found
            found += 1
            table = render(m.group("args"), int(m.group("n")), cache, m.group("rows"))
            if table != m.group("table"):
                stale.append(f"{page.relative_to(ROOT)}: {m.group('args')} (table {m.group('n')})")
            return m.group(1) + table + m.group("end")

        new = BLOCK.sub(fill, text)
        if new != text and not args.check:
            page.write_text(new)
    print(f"{found} generated tables; {len(stale)} {'differ' if args.check else 'rewritten'}")
    for s in stale:
        print(f"  {s}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
