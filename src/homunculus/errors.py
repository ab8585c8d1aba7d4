"""Errors a user can act on: each names the file, field and (for YAML) the line at fault."""

from __future__ import annotations


class HomunculusError(Exception):
    """Base class of every error the compiler reports to a user (exit code 2 from the CLI)."""


class SpecError(HomunculusError):
    """A problem in a spec (YAML or Python), located by file, field path and line."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None,
                 line: int | None = None) -> None:
        self.message = message
        self.file = file
        self.field = field
        self.line = line
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(self.file + (f":{self.line}" if self.line else ""))
        if self.field:
            where.append(f"field '{self.field}'")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class DataError(HomunculusError):
    """Bad training or test data: empty, one class, NaN/inf, values outside a declared width."""


class InfeasibleError(HomunculusError):
    """No candidate met the target's constraints; says which constraint binds."""


class VerificationError(HomunculusError):
    """The generated pipeline disagrees with the quantised model."""


class NotSupportedError(HomunculusError):
    """A feature of the spec that this version of the compiler does not implement yet."""


class ResumeError(HomunculusError):
    """``--resume`` cannot continue the stored search (none, or made with another spec)."""


class ToolchainError(HomunculusError):
    """The vendor P4 compiler rejected the generated program, or could not be run."""
