"""Token counting works offline wherever the process runs, even with a home it cannot write."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_tokens_are_counted_when_home_cannot_be_written(tmp_path):
    home = tmp_path / "home-is-a-file"
    home.write_text("")
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp_path / "tmp"), "TIKTOKEN_CACHE_DIR": ""}
    env.pop("XDG_CACHE_HOME", None)  # the user cache is under the home, as by default
    proc = subprocess.run([sys.executable, "-c", "from ingest.tokens import count_tokens; "
                           "print(count_tokens('The tide turns twice a day.'))"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == 7
    assert [p.name for p in (tmp_path / "tmp").iterdir()] == [f"lore-kb-tiktoken-{os.getuid()}"]
