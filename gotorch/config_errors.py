"""A task file's errors: where each one is and how to fix it. Light on purpose (no YAML, no cron).

The CLI imports these at start-up for every command; the parser in gotorch.config is only loaded by
the commands that read a task file, so `torch history` starts fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_MESSAGE = 500  # characters of a problem or hint


@dataclass(frozen=True, slots=True)
class ConfigError:
    """One problem in a task file, located and with a way to fix it."""

    file: str
    line: int
    col: int
    field: str
    problem: str
    hint: str = ""
    task: str | None = None

    def __post_init__(self) -> None:
        # A message quotes values, and a value may be what thousands of YAML aliases expand to: cap
        # it, or one invalid file of a few KB makes a log line (and a status reply) of many MB.
        for name in ("problem", "hint"):
            text = getattr(self, name)
            if len(text) > MAX_MESSAGE:
                object.__setattr__(self, name, f"{text[:MAX_MESSAGE]}... ({len(text)} characters in all)")

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}: " if self.line else f"{self.file}: "
        who = f"task {self.task}: " if self.task is not None else ""
        what = f"{self.field}: " if self.field else ""
        hint = f"; {self.hint}" if self.hint else ""
        return f"{where}{who}{what}{self.problem}{hint}"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form for `torch check --json` and status."""
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "task": _strip_quotes(self.task),
            "field": self.field,
            "problem": self.problem,
            "hint": self.hint,
            "message": str(self),
        }


def _strip_quotes(label: str | None) -> str | None:
    if label is not None and label.startswith("'") and label.endswith("'"):
        return label[1:-1]
    return label


class ConfigInvalid(Exception):
    """The file has errors; nothing from it may be used."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors
