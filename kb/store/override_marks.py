"""chromadb imported without the `overrides` package checking each of its methods' signatures.

Every process that opens a store imports chromadb, whose classes mark about 160
methods ``@override``; for each, `overrides` reads the calling frame's bytecode
to find the base classes and compares signatures. That was about a quarter of
`import kb.api`'s CPU (0.94 -> 0.69 s, medians of six runs each), in a fresh
`kb search` meant to answer within 1.0 s. The check is a lint for chromadb's
own developers and changes nothing at run time; the marker it leaves, which
chromadb's `EnforceOverrides` classes look for, is still set. Imported before
chromadb (kb/store/__init__.py); once chromadb is loaded, it changes nothing.
"""

from __future__ import annotations

import sys

import overrides


def marked(method=None, **_options):
    """`overrides.override` less its checks: the method marked as an override, as EnforceOverrides expects."""
    if method is None:  # used as @override(check_signature=False)
        return marked
    method.__override__ = True
    return method


if "chromadb" not in sys.modules:
    overrides.override = overrides.overrides = marked
