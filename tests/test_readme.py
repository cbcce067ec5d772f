"""The README's and the docs' commands run as written: every ``splitvit train|client|serve|plan`` line in
their shell blocks composes and validates (the data path is a placeholder; nothing is trained here)."""

import re
import shlex
from pathlib import Path

import pytest

from splitvit.plan import jobs

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def commands() -> list[str]:
    text = "\n".join(page.read_text() for page in PAGES)
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        block = re.sub(r"\\\n\s*", " ", block)  # continuation lines
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            line = re.sub(r"^(SPLITVIT_TOKEN=\S+\s+)", "", line)
            if re.match(r"splitvit (train|serve|client|plan)\b", line) and "$" not in line and "<" not in line:
                found.append(line)
    return list(dict.fromkeys(found))  # each command once


def test_the_readme_has_commands():
    assert len(commands()) >= 15


@pytest.mark.parametrize("line", commands())
def test_readme_command_is_valid(line, tmp_path):
    words = shlex.split(line)
    args = [w for w in words[2:] if not w.startswith("-")]
    if "--help" in words or "--all" in words:
        return
    if any(w.startswith(("clients.engine=flower", "clients.strategy=")) for w in words):
        pytest.importorskip("flwr", reason="the flower extra")  # validates only where Flower is installed
    if words[1] in ("serve", "client"):
        args = ["link=grpc", *(f"link.{a}" if a.startswith(("server=", "listen=")) else a for a in args)]
    args = [a.replace("/path/to/data", str(tmp_path)).replace("~/my_images", str(tmp_path)) for a in args]
    args = [a for a in args if not a.startswith("device=cuda")]  # no GPU here; the rest must still hold
    listed = jobs(args)
    assert listed
