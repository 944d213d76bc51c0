"""A Dockerfile as BuildKit reads it: instructions with their exact line ranges in the source text.

The grammar (line continuations, the escape directive, heredocs, flags, JSON form) is parsed by the
`dockerfile` package, which wraps BuildKit's own Go parser. This module adds what rewriting needs:
the character offsets of every line, so a rewrite can edit the source and keep every other byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import dockerfile

from ..errors import InputError

_KNOWN = frozenset(c.upper() for c in dockerfile.all_cmds())
_ESCAPE_DIRECTIVE = re.compile(r"^#\s*escape\s*=\s*(\S)\s*$", re.IGNORECASE)
_DIRECTIVE = re.compile(r"^#\s*[a-zA-Z_]+\s*=")


@dataclass(frozen=True)
class Instruction:
    cmd: str  # upper case: RUN, COPY, …
    start_line: int  # 1-based, inclusive
    end_line: int  # 1-based, inclusive (heredoc bodies included)
    flags: tuple[str, ...]  # e.g. ("--mount=type=cache,target=/root/.cache/pip",)
    value: tuple[str, ...]  # shell form: one string with continuations joined; JSON form: the list
    json: bool
    heredocs: tuple[str, ...]  # heredoc bodies, in order


@dataclass(frozen=True)
class Dockerfile:
    text: str
    line_starts: tuple[int, ...]  # offset of each line's first character; one extra entry = len(text)
    instructions: tuple[Instruction, ...]
    escape: str  # the line-continuation character: '\\' unless `# escape=` says otherwise

    @property
    def newline(self) -> str:
        """The file's line ending, for lines a rewrite adds."""
        first = self.text.find("\n")
        return "\r\n" if first > 0 and self.text[first - 1] == "\r" else "\n"

    def line_span(self, first: int, last: int) -> tuple[int, int]:
        """Character offsets [start, end) of lines first..last (1-based, inclusive), newlines included."""
        return self.line_starts[first - 1], self.line_starts[last]

    def source(self, instruction: Instruction) -> str:
        start, end = self.line_span(instruction.start_line, instruction.end_line)
        return self.text[start:end]


def split_line_starts(text: str) -> tuple[int, ...]:
    starts = [0]
    for match in re.finditer("\n", text):
        starts.append(match.end())
    if starts[-1] != len(text):
        starts.append(len(text))
    return tuple(starts)


def escape_character(text: str) -> str:
    """The `# escape=` parser directive, which may only appear before any other line."""
    for line in text.lstrip("\ufeff").splitlines():
        match = _ESCAPE_DIRECTIVE.match(line.strip())
        if match:
            return match.group(1)
        if not _DIRECTIVE.match(line.strip()):
            break
    return "\\"


def parse_dockerfile(text: str, name: str = "Dockerfile") -> Dockerfile:
    """Parse with BuildKit's parser; an unparsable file or an unknown instruction is an InputError."""
    try:
        commands = dockerfile.parse_string(text)
    except dockerfile.GoParseError as exc:
        raise InputError(
            f"{name}: cannot be parsed as a Dockerfile ({exc}): fix the file or pass the right path"
        ) from None
    instructions = []
    for command in commands:
        cmd = command.cmd.upper()
        if cmd not in _KNOWN:
            raise InputError(
                f"{name}:{command.start_line}: unknown instruction '{command.cmd}': BuildKit would reject this file"
            )
        instructions.append(
            Instruction(
                cmd=cmd,
                start_line=command.start_line,
                end_line=command.end_line,
                flags=tuple(command.flags),
                value=tuple(command.value),
                json=command.json,
                heredocs=tuple(h.content for h in command.heredocs),
            )
        )
    if not instructions or instructions[0].cmd not in ("FROM", "ARG"):
        raise InputError(f"{name}: a Dockerfile starts with FROM (or ARG before FROM): is this the right file?")
    return Dockerfile(
        text=text,
        line_starts=split_line_starts(text),
        instructions=tuple(instructions),
        escape=escape_character(text),
    )
