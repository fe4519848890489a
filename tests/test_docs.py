"""The docs hold together: README.md stays a front door, every `docs/<page>.md#<anchor>` the repository cites
(code comments and docstrings included) names a heading that exists, and every relative link in README.md and
docs/ points at a file (and heading) that exists. Fast: reads files only."""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_LIMIT = 30_000  # bytes: what Tolk is, the two commands, a first example, a map of docs/

# Where citations are looked for, and what is never walked (virtualenvs, caches, build output, test output).
CITING_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".js", ".html", ".sh", ".tpl", ".txt", ".json"}
CITING_NAMES = {"Makefile", "Dockerfile"}
SKIP_DIRS = {"__pycache__", "node_modules", "build", "dist", "data", "test-artifacts", "models"}

CITATION = re.compile(r"\bdocs/((?:[\w-]+/)*[\w-]+\.md)#([\w-]+)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]+`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"", re.I)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, links and markup reduced to their text, every character but
    letters, digits, spaces, '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) → text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """Every anchor a markdown file has (duplicate headings get -1, -2… as on GitHub)."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set(HTML_ANCHOR.findall(text))
    for _, title in HEADING.findall(text):
        base = slug(title)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


def citing_files() -> list[Path]:
    out = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in files:
            if Path(name).suffix in CITING_SUFFIXES or name in CITING_NAMES:
                out.append(Path(folder) / name)
    return sorted(out)


def docs_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def broken_citations(files: list[Path]) -> list[str]:
    """`docs/<page>.md#<anchor>` citations whose page or heading does not exist, as 'file:line: citation'."""
    bad = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for m in CITATION.finditer(text):
            page, anchor = ROOT / "docs" / m[1], m[2]
            if not page.is_file() or anchor not in anchors(page):
                line = text.count("\n", 0, m.start()) + 1
                bad.append(f"{shown(path)}:{line}: docs/{m[1]}#{anchor}")
    return bad


def broken_links(pages: list[Path]) -> list[str]:
    """Relative links (and same-page anchors) in markdown pages that lead nowhere, as 'page: link'."""
    bad = []
    for page in pages:
        text = INLINE_CODE.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
        for target in LINK.findall(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            if not dest.exists():
                bad.append(f"{shown(page)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{shown(page)}: {target} (no such heading)")
    return bad


def test_slug_is_githubs() -> None:
    assert slug("Protocol: `GET /v1/listen` (WebSocket)") == "protocol-get-v1listen-websocket"
    assert slug("The `tolk` command") == "the-tolk-command"
    assert slug("Messages, ordering and delivery") == "messages-ordering-and-delivery"
    assert slug("TOLK_FULL_WINDOW_EXTRA_S at 2 cores") == "tolk_full_window_extra_s-at-2-cores"
    assert slug("See [the page](x.md) — now") == "see-the-page--now"


def test_readme_is_a_front_door() -> None:
    size = (ROOT / "README.md").stat().st_size
    assert size < README_LIMIT, f"README.md is {size} bytes: move detail into docs/ (limit {README_LIMIT})"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make run" in readme and "make test" in readme  # the two commands; .ci/run calls `make test`


def test_every_cited_docs_anchor_exists() -> None:
    files = citing_files()
    assert any(p.name == "test_docs.py" for p in files) and any(p.suffix == ".py" for p in files)
    bad = broken_citations(files)
    assert not bad, "citations of docs headings that do not exist:\n" + "\n".join(bad)


def test_every_relative_link_in_the_docs_exists() -> None:
    pages = docs_pages()
    assert len(pages) > 10, pages
    bad = broken_links(pages)
    assert not bad, "links that lead nowhere:\n" + "\n".join(bad)


def test_a_wrong_anchor_is_caught(tmp_path: Path) -> None:
    """The checks themselves: a citation or a link to a heading (or a file) that is not there is reported."""
    good, wrong, gone = ("docs/" + cite for cite in ("benchmarks.md#faults", "benchmarks.md#no-such-heading",
                                                       "nope.md#faults"))  # split: this file is scanned too
    code = tmp_path / "cites.py"
    code.write_text(f"# see {good}, {wrong}, {gone}\n")
    assert broken_citations([code]) == [f"{code}:1: {wrong}", f"{code}:1: {gone}"]
    bench = os.path.relpath(ROOT / "docs" / "benchmarks.md", tmp_path)
    page = tmp_path / "probe.md"
    page.write_text(f"# Probe\n\n[ok]({bench}#faults), [bad]({bench}#nope), [gone](nope.md), [here](#probe), "
                    "[not here](#elsewhere)\n\n```\n[in code](nowhere.md)\n```\n")
    assert broken_links([page]) == [f"{page}: {bench}#nope (no such heading)", f"{page}: nope.md (no such file)",
                                    f"{page}: #elsewhere (no such heading)"]
