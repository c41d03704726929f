"""scripts/install.sh stops when pip fails, and then leaves no stamp that would skip the next install.

The venv's python is a stand-in here (a shell script), so no package is installed: its `-m pip install`
succeeds for single packages and fails, as a full disk made pip fail in CI, for requirement files.
"""

import os
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1 $2 $3" = "-m pip install" ]; then
  for arg in "$@"; do
    if [ "$arg" = "-r" ]; then
      echo "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device" >&2
      exit 1
    fi
  done
fi
exit 0
"""


def test_a_failing_requirements_install_stops_the_script_and_writes_no_stamp(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)

    result = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh")], capture_output=True, text=True,
                            env={**os.environ, "LYNX_VENV": str(venv)}, timeout=60)  # fmt: skip

    assert result.returncode != 0, result.stderr
    assert "No space left on device" in result.stdout + result.stderr
    assert not (venv / ".lynx-sglang-installed").exists()
