"""How the code base opens store sessions, checked on the source (AST):

- no ``await`` inside a session block: a coroutine suspended there would hold its snapshot
  or the writer lock while other coroutines on the same thread need the store;
- the faces and the certificate lifecycle say what each transaction is (``write=True`` or
  ``write=False``), so every writer takes the writer lock when it begins;
- the runtime (the loop that carries packets) cannot open a session at all: it reaches the
  store only through ``AsyncStore``, whose calls run in store threads, bounded in time.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("sslvpn", "client_profiles", "web")
DECLARED = ("web", "client_profiles", "sslvpn/cli")  # every session there says write=


def _sources(*folders: str) -> Iterator[tuple[Path, ast.Module]]:
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path.relative_to(ROOT), ast.parse(path.read_text(), filename=str(path))


def _session_calls(node: ast.AST) -> Iterator[ast.Call]:
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(
                call.func, "id", "")
            if name == "session":
                yield call


def test_no_await_inside_a_session_block() -> None:
    found = []
    for path, tree in _sources(*PACKAGES):
        for node in ast.walk(tree):
            if isinstance(node, ast.With | ast.AsyncWith) and any(
                next(_session_calls(item.context_expr), None) for item in node.items
            ):
                found += [f"{path}:{a.lineno}" for a in ast.walk(node) if isinstance(a, ast.Await)]
    assert found == []


def test_faces_and_lifecycle_declare_every_session_read_or_write() -> None:
    undeclared = [
        f"{path}:{call.lineno}"
        for path, tree in _sources(*DECLARED)
        for call in _session_calls(tree)
        if not any(keyword.arg == "write" for keyword in call.keywords)
    ]
    assert undeclared == []


STORE_INTERNALS = ("sqlalchemy", "sqlmodel", "sslvpn.store.db")


def _type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """Imports under ``if TYPE_CHECKING:``: names for annotations, nothing to call."""
    return {node for block in ast.walk(tree) if isinstance(block, ast.If)
            and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
            for node in ast.walk(block)}


def test_the_runtime_reaches_the_store_only_through_the_async_facade() -> None:
    """No engine, no session, no database driver in sslvpn/runtime: a new store call there
    can only be an ``AsyncStore`` call, which never blocks the loop."""
    found = []
    for path, tree in _sources("sslvpn/runtime"):
        typing_only = _type_checking_only(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node not in typing_only:
                modules = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import) and node not in typing_only:
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.Attribute) and node.attr in ("engine", "_engine"):
                modules = ["<an engine>"]
            else:
                continue
            found += [f"{path}:{node.lineno} {m}" for m in modules
                      if m == "<an engine>" or m.startswith(STORE_INTERNALS)]
    assert found == []
