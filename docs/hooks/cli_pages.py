"""The CLI reference pages (docs/cli/), generated from the typer app.

One page per top-level command (a group, such as `data`, gets its sub-commands on its page),
written by typer's own Markdown renderer from the same objects that print `--help`. The pages are
committed so they read on a forge too; as an MkDocs hook this module regenerates them at build
time and fails a strict build when a committed page differs, so `--help` and the docs cannot
drift. Rewrite them with `python docs/hooks/cli_pages.py`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from typer.cli import get_docs_for_click

from segdec_prune.cli import app

CLI_DIR = Path(__file__).resolve().parents[1] / "cli"
log = logging.getLogger("mkdocs.hooks.cli_pages")


def pages() -> dict[str, str]:
    """File name -> Markdown, for every top-level command and the index."""
    root = typer.main.get_command(app)
    ctx = typer.models.Context(root)
    out = {f"{name}.md": get_docs_for_click(obj=cmd, ctx=ctx, name=name, call_prefix="segdec-prune")
           for name, cmd in root.commands.items()}
    rows = "\n".join(f"| [`{n}`]({n}.md) | {c.get_short_help_str(limit=300)} |" for n, c in root.commands.items())
    out["index.md"] = ("# CLI reference\n\nGenerated from the typer app (`docs/hooks/cli_pages.py`): each page is "
                       "what `segdec-prune COMMAND --help` prints.\nEvery command that takes `--config` also "
                       "takes `--set section.key=value` overrides.\n\n| command | what it does |\n|---|---|\n"
                       + rows + "\n")
    return out


def stale() -> list[str]:
    """The committed pages that differ from what the CLI generates now (or are missing/extra)."""
    want = pages()
    have = {p.name for p in CLI_DIR.glob("*.md")}
    return sorted(n for n in want.keys() | have
                  if n not in have or n not in want or (CLI_DIR / n).read_text() != want[n])


def on_pre_build(config) -> None:  # MkDocs hook
    for name in stale():
        log.warning("docs/cli/%s does not match the CLI's --help: run `python docs/hooks/cli_pages.py`", name)


def write() -> int:
    """Rewrite docs/cli/ from the CLI (pages for commands that are gone are removed); the page count."""
    CLI_DIR.mkdir(exist_ok=True)
    want = pages()
    for old in CLI_DIR.glob("*.md"):
        if old.name not in want:
            old.unlink()
    for name, text in want.items():
        (CLI_DIR / name).write_text(text)
    return len(want)


if __name__ == "__main__":
    print(f"wrote {write()} pages to {CLI_DIR}")
