"""The one error type a user sees: every bad input becomes a single line and exit code 2."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file, located by a dotted key path."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        if not where:
            return self.message
        sep = " " if self.message.startswith("= ") else ": "
        return f"{where}{sep}{self.message}"


class HarnessError(Exception):
    """Raised for user-facing input errors; the CLI prints each problem on one line and exits 2."""

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        if isinstance(problems, str):
            problems = [Problem("", "", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class SpecError(HarnessError):
    """A run spec is invalid."""
