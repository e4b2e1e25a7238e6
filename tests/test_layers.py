"""The layering rules, enforced: data flows files -> ingest -> kb, and each outside service has one door."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import kb

ROOT = Path(__file__).resolve().parent.parent


def imports_of(path: Path) -> set[str]:
    """Every module a source file imports, at any depth (lazy imports inside functions count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def importers(package: str, module: str) -> list[str]:
    """Files under ``package`` that import ``module`` or one of its submodules."""
    return sorted(str(path.relative_to(ROOT)) for path in (ROOT / package).rglob("*.py")
                  if any(name == module or name.startswith(f"{module}.") for name in imports_of(path)))


def test_ingest_never_imports_kb():
    assert importers("ingest", "kb") == []


def test_only_the_store_package_imports_chromadb():
    assert [p for p in importers("kb", "chromadb") if not p.startswith("kb/store/")] == []


def test_chromadb_comes_in_with_its_overrides_marked_but_not_checked():
    """kb.store's first import spares chromadb's import the `overrides` checks (kb/store/override_marks.py),
    and chromadb's classes still find their overriding methods marked, or they would fail to build."""
    code = ("import overrides, kb.api, chromadb.api.rust as rust; from kb.store.override_marks import marked; "
            "print(overrides.override is marked, rust.RustBindingsAPI.start.__override__)")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert ran.stdout.split() == ["True", "True"]


def test_only_kb_llm_imports_openai():
    assert importers("kb", "openai") == ["kb/llm.py"]
    assert importers("ingest", "openai") == []


def test_the_public_api_is_pinned():
    assert sorted(kb.__all__) == sorted([
        "Answer", "Busy", "Citation", "ConfigError", "Forbidden", "Hit", "IngestReport", "InvalidRequest",
        "KBError", "KnowledgeBase", "LLMError", "ModelMismatch", "NPC", "NotFound", "RetrievalConfig",
        "Settings", "StoreLocked", "Unauthorized", "Unavailable",
    ])
    for name in kb.__all__:
        assert getattr(kb, name).__doc__, f"kb.{name} has no docstring"
