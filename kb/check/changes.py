"""`--changed-since REV`: the files git says changed since a revision (committed, staged, unstaged or new)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from kb.errors import KBError


def _git(where: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise KBError("--changed-since needs git, which is not installed") from None
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        raise KBError(f"git {' '.join(args)} failed: {detail}")
    return done.stdout


def changed_files(rev: str, where: Path) -> set[Path]:
    """Absolute paths of files changed since ``rev`` in the working tree holding ``where``, plus untracked ones.

    Raises:
        KBError: not in a git repository, or git does not know ``rev``.
    """
    where = where if where.is_dir() else where.parent
    top = Path(_git(where, "rev-parse", "--show-toplevel").strip())
    names = _git(top, "diff", "--name-only", "--no-renames", rev, "--").splitlines()
    names += _git(top, "ls-files", "--others", "--exclude-standard", "--full-name").splitlines()
    return {(top / name).resolve() for name in names if name}
