"""The docs' deployment recipe, as written (examples/flower/deploy_local.sh): a SuperLink and two SuperNodes on
loopback with TLS and SuperNode authentication, flwr run, and splitvit's run files at the end."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="the flower extra: pip install -e '.[flower]'")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not (shutil.which("openssl") and shutil.which("ssh-keygen")), reason="needs openssl and ssh-keygen")
def test_the_deployment_recipe_runs_on_loopback(tmp_path):
    # Flower's commands live beside this interpreter; a virtual environment need not be on PATH (as in CI)
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    proc = subprocess.run([str(ROOT / "examples" / "flower" / "deploy_local.sh"), str(tmp_path)],
                          capture_output=True, text=True, timeout=900, env=env)
    logs = "".join((p.name + ":\n" + p.read_text()[-2000:]) for p in tmp_path.glob("*.log"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs
    summary = json.loads((tmp_path / "outputs" / "flower" / "summary.json").read_text())
    assert summary["engine"] == "flower" and summary["clients"] == 2 and summary["steps"] == 8
    assert summary["stopped_by"] == "rounds" and summary["framing_bytes_up"] > 0  # over splitvit's gRPC link
    assert "registered successfully" in proc.stdout  # only registered SuperNodes may connect
    assert "https://127.0.0.1:8000" in (tmp_path / "superlink.log").read_text()  # the SuperLink speaks TLS only
    rows = (tmp_path / "outputs" / "flower" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["round"] for r in rows] == [1, 2]
