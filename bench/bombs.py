"""Peak memory and wall time of `kb ingest` on hostile files at issue 11's sizes, each beside a good file.

Each bomb goes in a folder of its own with one good Markdown file, and that
folder is ingested by a fresh `kb ingest --json` process (the code under
``--code``, default this tree) under a cap: RLIMIT_AS (``--cap-mb``) and a
wall-clock limit (``--cap-s``), past which the whole process group is killed
and the row says "≥ cap". Peak RSS is the largest VmHWM of any process in the
ingest's session (the CLI and its parse worker), sampled every 50 ms.

    python bench/bombs.py [--code DIR] [--cap-mb 4096] [--cap-s 60] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # bench/ingest.py would shadow the ingest package

from bench.common import machine, revision  # noqa: E402

GOOD = "# Herons\n\nGrey herons nest in the reed beds of Saltreach.\n"
LEVELS = "abcdefghi"


def yaml_alias_bomb(path: Path) -> None:
    """Billion laughs in front matter: nine levels of nine aliases, stringified as one metadata value."""
    lines = ["---", "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for previous, name in zip(LEVELS, LEVELS[1:]):
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    lines += ["lore: {bomb: *i}", "---", "The tide."]
    path.write_text("\n".join(lines) + "\n")


def docx_zip_bomb(path: Path, target_mb: int = 1200) -> None:
    """A Word file whose document.xml is ``target_mb`` MB of one repeated paragraph (deflate ~1000:1)."""
    w = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    paragraph = b"<w:p><w:r><w:t>lol</w:t></w:r></w:p>"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("[Content_Types].xml",
                   '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/'
                   'package/2006/content-types"><Default Extension="rels" ContentType="application/'
                   'vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType='
                   '"application/xml"/><Override PartName="/word/document.xml" ContentType="application/'
                   'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>')
        z.writestr("_rels/.rels",
                   '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.'
                   'openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://'
                   'schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
                   'Target="word/document.xml"/></Relationships>')
        with z.open("word/document.xml", "w", force_zip64=True) as out:
            out.write(f'<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="{w}"><w:body>'.encode())
            block = paragraph * (1 << 16)
            for _ in range(target_mb * 2**20 // len(block)):
                out.write(block)
            out.write(b"</w:body></w:document>")


def yarn_long_line(path: Path, mb: int = 5) -> None:
    """One Yarn node whose only line is ``mb`` MB of words."""
    words = "the tide turns " * (mb * 2**20 // 15)
    path.write_text(f"title: Bomb\n---\nMaren: {words}\n===\n")


def csv_million_rows(path: Path, rows: int = 1_000_000) -> None:
    """A localization table of a million short rows, under the 20 MB file limit."""
    with open(path, "w") as out:
        out.write("key,en\n")
        out.writelines(f"k{i},w{i}\n" for i in range(rows))


def ink_nested_braces(path: Path, depth: int = 100_000) -> None:
    """One Ink line of ``depth`` nested braces."""
    path.write_text("{" * depth + "x" + "}" * depth + "\n")


def ink_comment_openers(path: Path, count: int = 100_000) -> None:
    """One Ink line of ``count`` `/*` never closed (the comment pass rescanned to the end from each)."""
    path.write_text("x /*" * count + "\n")


def yarn_command_openers(path: Path, count: int = 100_000) -> None:
    """One Yarn line of ``count`` `<<` never closed (the command pass rescanned to the end from each)."""
    path.write_text(f"title: Bomb\n---\nMaren: {'<<' * count}\n===\n")


BOMBS = {
    "yaml-alias": ("bomb.md", yaml_alias_bomb),
    "docx-zip": ("bomb.docx", docx_zip_bomb),
    "yarn-5mb-line": ("bomb.yarn", yarn_long_line),
    "csv-1e6-rows": ("bomb.csv", csv_million_rows),
    "ink-100k-braces": ("bomb.ink", ink_nested_braces),
    "ink-100k-comment-openers": ("bomb.ink", ink_comment_openers),
    "yarn-100k-command-openers": ("bomb.yarn", yarn_command_openers),
}


def _session_peak_kb(session: int, peaks: dict, done: threading.Event) -> None:
    """Sample VmHWM of every process in one session until told to stop."""
    while not done.wait(0.05):
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[3]) != session:
                    continue
                status = Path(f"/proc/{pid}/status").read_text()
            except (OSError, ValueError, IndexError):
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peaks[pid] = max(peaks.get(pid, 0), int(line.split()[1]))


def run(folder: Path, kb_dir: Path, code: Path, cap_mb: int, cap_s: float) -> dict:
    """Ingest one folder in a capped process group; its outcome, peak RSS and wall time."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (cap_mb * 2**20, cap_mb * 2**20))

    env = {**os.environ, "PYTHONPATH": str(code)}
    command = [sys.executable, "-c", "import sys; from kb.cli import main; sys.exit(main())",
               "ingest", str(folder), "--kb", str(kb_dir), "--json"]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            preexec_fn=cap, start_new_session=True)
    peaks: dict = {}
    done = threading.Event()
    sampler = threading.Thread(target=_session_peak_kb, args=(proc.pid, peaks, done), daemon=True)
    sampler.start()
    timer = threading.Timer(cap_s, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    timer.cancel()
    done.set()
    sampler.join()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # a parse worker left behind by a killed CLI
    peak_mb = max([*peaks.values(), 0]) / 1024
    try:
        report = json.loads(out)
    except ValueError:
        report = None
    if report is None:
        last = (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        outcome = (f"killed at the {cap_s:.0f} s cap" if proc.returncode == -signal.SIGKILL and wall >= cap_s
                   else f"crashed: {last[:90]}")
        return {"outcome": outcome, "good_in": "no", "peak_mb": peak_mb, "wall": wall,
                "capped": "≥ " if wall >= cap_s or "MemoryError" in last else ""}
    failed = {f["path"]: f["error"] for f in report["failed"]}
    bomb = next((p for p in failed if p.startswith("bomb")), None)
    outcome = f"failed: {failed[bomb]}" if bomb else f"ingested ({report['chunks'] - 1} chunks)"
    return {"outcome": outcome, "good_in": "yes" if "good.md" in report["added"] else "no",
            "peak_mb": peak_mb, "wall": wall, "capped": ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="source tree whose kb/ and ingest/ run the ingest")
    parser.add_argument("--cap-mb", type=int, default=4096)
    parser.add_argument("--cap-s", type=float, default=60)
    parser.add_argument("--only", nargs="*", choices=sorted(BOMBS))
    args = parser.parse_args()
    print(f"# {machine()}; code {args.code}; bench at {revision()}; cap {args.cap_mb} MB, {args.cap_s:.0f} s")
    print("| bomb | file size | outcome | good file in | peak RSS | wall |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or BOMBS:
            file_name, build = BOMBS[name]
            folder = Path(tmp) / name
            folder.mkdir()
            (folder / "good.md").write_text(GOOD)
            build(folder / file_name)
            size = (folder / file_name).stat().st_size
            row = run(folder, Path(tmp) / f"{name}-kb", args.code, args.cap_mb, args.cap_s)
            size_text = f"{size} B" if size < 10_000 else f"{size / 2**20:.1f} MB"
            print(f"| {name} | {size_text} | {row['outcome']} | {row['good_in']} | "
                  f"{row['capped']}{row['peak_mb']:,.0f} MB | {row['capped']}{row['wall']:.1f} s |", flush=True)
            (folder / file_name).unlink()


if __name__ == "__main__":
    main()
