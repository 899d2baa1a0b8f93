"""MkDocs hooks for the documentation site (mkdocs.yml): the README is the site's front page, and links
to repository files outside docs/ (configs, code) become the file's path in code type, since the site
has no copy of them. Only the site build uses this file."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

REPO_ROOT = Path(__file__).resolve().parent.parent
_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")


def on_files(files: Files, config) -> Files:
    """Add README.md as the site's index.md (docs/ has no index of its own)."""
    files.append(File.generated(config, "index.md", content=(REPO_ROOT / "README.md").read_text()))
    return files


def _rewrite(match: re.Match, page_dir: Path, docs_dir: Path) -> str:
    text, target = match.group(1), match.group(2)
    if re.match(r"^[a-z]+:", target) or target.startswith("#"):
        return match.group(0)
    path, _, anchor = target.partition("#")
    resolved = (page_dir / path).resolve()
    if resolved.is_relative_to(docs_dir):
        relative = resolved.relative_to(docs_dir).as_posix()  # the pages are flat in docs/, like the index
        return f"[{text}]({relative}{'#' + anchor if anchor else ''})"
    repo_path = resolved.relative_to(REPO_ROOT).as_posix() if resolved.is_relative_to(REPO_ROOT) else path
    return text if text.strip("`") == repo_path else f"{text} (`{repo_path}`)"


def on_page_markdown(markdown: str, page, config, files: Files) -> str:
    """Links to repository files outside docs/ become their path in code type; the README's links into
    docs/ point at the pages."""
    docs_dir = Path(config["docs_dir"]).resolve()
    # the generated index stands for README.md at the repository root
    page_dir = REPO_ROOT if page.file.src_uri == "index.md" else (docs_dir / page.file.src_uri).parent
    return _LINK.sub(lambda match: _rewrite(match, page_dir, docs_dir), markdown)
