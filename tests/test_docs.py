"""The docs stay true to the code: every variable the server reads is in deploy/env.example and
in the docs, and every repository path the docs name exists."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("protocol", "storage", "integrations", "sync_server")
DOCS = (
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("**/*.md")),
    ROOT / "deploy" / "README.md",
    *sorted((ROOT / "clients").glob("**/*.md")),
)
# A variable read from the environment: env.get("NAME"), environ["NAME"], _int(env, "NAME", …).
READ = re.compile(r'\b(?:env|environ)\b[^"\n]{0,24}"([A-Z][A-Z0-9_]{2,})"')
# `code` spans and the targets of [links](target).
CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
PATH = re.compile(r"^[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.*\-]+)+/?$")


def read_by_the_server() -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}
    for package in SOURCES:
        for source in (ROOT / package).glob("**/*.py"):
            for name in READ.findall(source.read_text()):
                names.setdefault(name, set()).add(str(source.relative_to(ROOT)))
    return names


def test_every_variable_is_in_env_example_and_in_the_docs() -> None:
    example = (ROOT / "deploy" / "env.example").read_text()
    documented = "\n".join(path.read_text() for path in DOCS)
    names = read_by_the_server()
    assert len(names) > 50
    missing_example = {
        name: sorted(where)
        for name, where in names.items()
        if not re.search(rf"^#? ?{name}=", example, re.MULTILINE)
    }
    missing_docs = {name: sorted(where) for name, where in names.items() if name not in documented}
    assert missing_example == {}, "not in deploy/env.example"
    assert missing_docs == {}, "not in README.md or docs/"


def named_paths(document: Path) -> Iterator[tuple[str, Path]]:
    text = document.read_text()
    for target in LINK.findall(text):
        target = target.split("#", 1)[0]
        if target and "://" not in target and not target.startswith(("mailto:", "/")):
            yield target, (document.parent / target)
    top_level = {entry.name for entry in ROOT.iterdir()}
    for span in CODE.findall(text):
        span = span.strip()
        if not PATH.match(span) or span.split("/", 1)[0] not in top_level:
            continue  # a URL path, a shell line, a name inside a container, …
        yield span, ROOT / span


def test_every_path_the_docs_name_exists() -> None:
    missing = []
    checked = 0
    for document in DOCS:
        for named, path in named_paths(document):
            if named.startswith("../shared/"):
                continue  # the shared acceptance contract beside the project, not in it
            checked += 1
            exists = any(ROOT.glob(str(path.relative_to(ROOT)))) if "*" in named else path.exists()
            if not exists:
                missing.append(f"{document.relative_to(ROOT)}: {named}")
    assert checked > 30
    assert missing == []
