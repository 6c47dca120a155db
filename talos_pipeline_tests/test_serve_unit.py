"""The systemd unit of `serve/` (deploy/talos-serve.service) passes `systemd-analyze verify`, with
its ExecStart pointed at this environment's `talos-pipeline` (the only path that differs here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from talos_pipeline_tests.fake_sigstore.fixtures import missing_tool

UNIT = Path(__file__).resolve().parent.parent / "deploy" / "talos-serve.service"
INSTALLED = "/opt/talos-pipeline/.venv/bin/talos-pipeline"


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        missing_tool("systemd-analyze (Debian systemd) is not installed")
    text = UNIT.read_text()
    assert INSTALLED in text and "ExecReload=/bin/kill -HUP $MAINPID" in text
    local = tmp_path / UNIT.name
    local.write_text(text.replace(INSTALLED, str(Path(sys.executable).parent / "talos-pipeline")))
    result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
