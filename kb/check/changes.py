"""`--changed-since REV`: the files git says changed since a revision (committed, staged, unstaged or new)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from kb.errors import KBError


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise KBError("--changed-since needs git, which is not installed") from None
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        raise KBError(f"git {' '.join(args)} failed: {detail}")
    return done.stdout


def changed_files(rev: str) -> set[Path]:
    """Absolute paths of files changed since ``rev`` in the working tree, plus untracked ones.

    Raises:
        KBError: not in a git repository, or git does not know ``rev``.
    """
    top = Path(_git("rev-parse", "--show-toplevel").strip())
    names = _git("diff", "--name-only", "--no-renames", rev, "--").splitlines()
    names += _git("ls-files", "--others", "--exclude-standard", "--full-name", str(top)).splitlines()
    return {(top / name).resolve() for name in names if name}
