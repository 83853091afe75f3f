"""Files the command line reads for a user (CSV audiences, templates,
labelled questions): one clear line when a file cannot be read as text."""

from __future__ import annotations

import click


def read_text(path: str, *, encoding: str = "utf-8", newline: str | None = None) -> str:
    """The text of ``path``; a file that is not UTF-8 or cannot be read ends
    the command with a line saying so, not a traceback."""
    try:
        with open(path, encoding=encoding, newline=newline) as fh:
            return fh.read()
    except UnicodeDecodeError as exc:
        raise click.ClickException(
            f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 and try again"
        ) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from exc
