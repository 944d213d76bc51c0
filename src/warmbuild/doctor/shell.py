"""The shell words of a RUN instruction, with their offsets in the Dockerfile text.

Rewrites edit the source, not a normalised copy, so every word keeps where it came from. The
scanner knows what a RUN line can hold: the escape character's line continuations (joined, as
BuildKit joins them), comment lines inside a continuation (dropped, as BuildKit drops them),
quotes, `$(...)` and backticks, and the operators that separate commands. It is not a full shell:
anything it cannot follow makes the caller treat the command as one to leave alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from .parse import Dockerfile, Instruction

OPERATORS = ("&&", "||", ";;", "|&", ";", "|", "&", "(", ")", "{", "}")


@dataclass(frozen=True)
class Word:
    text: str  # the word as the shell sees it, quotes removed (approximately: no expansion)
    start: int  # offset in Dockerfile.text
    end: int
    quoted: bool = False
    operator: bool = False


@dataclass(frozen=True)
class Command:
    """One simple command: `NAME=value ... program arg ...`, between operators."""

    assignments: tuple[Word, ...]
    words: tuple[Word, ...]  # program first; empty when the command is only assignments

    @property
    def program(self) -> str:
        return self.words[0].text.rsplit("/", 1)[-1] if self.words else ""


def run_words(doc: Dockerfile, instruction: Instruction) -> tuple[Word, ...] | None:
    """The words after RUN and its flags; None for JSON form, heredocs or unbalanced quoting."""
    if instruction.cmd != "RUN" or instruction.json or instruction.heredocs:
        return None
    start, end = doc.line_span(instruction.start_line, instruction.end_line)
    words = scan_words(doc.text, start + _keyword_length(doc.text, start), end, doc.escape)
    if words is None:
        return None
    return words[len(instruction.flags) :]


def _keyword_length(text: str, start: int) -> int:
    offset = start
    while offset < len(text) and text[offset] in " \t":
        offset += 1
    while offset < len(text) and text[offset].isalpha():
        offset += 1
    return offset - start


def scan_words(text: str, start: int, end: int, escape: str = "\\") -> tuple[Word, ...] | None:
    words: list[Word] = []
    i = start
    current: list[str] = []
    word_start = -1
    quoted = False

    def finish(at: int) -> None:
        nonlocal current, word_start, quoted
        if word_start >= 0:
            words.append(Word("".join(current), word_start, at, quoted))
        current, word_start, quoted = [], -1, False

    line_start = True  # at the start of a physical line that continues the instruction
    last_end = start
    while i < end:
        c = text[i]
        if line_start:
            j = i
            while j < end and text[j] in " \t":
                j += 1
            if j < end and text[j] == "#" and i != start:
                i = _line_end(text, j, end)  # a comment line inside a continuation
                continue
            if j < end and text[j] in "\r\n" and i != start:
                i = _line_end(text, j, end)  # an empty continuation line
                continue
            line_start = False
        if c == escape and _is_continuation(text, i, end):
            i = _line_end(text, i + 1, end)
            line_start = True
            continue
        if c in "\r\n":
            i += 1
            line_start = True
            continue
        if c in " \t":
            finish(last_end)
            i += 1
            continue
        op = _operator_at(text, i, end, in_word=word_start >= 0)
        if op is not None:
            finish(last_end)
            words.append(Word(op, i, i + len(op), operator=True))
            i += len(op)
            last_end = i
            continue
        if word_start < 0:
            word_start = i
        if c in "'\"`":
            close = _closing_quote(text, i, end)
            if close < 0:
                return None
            current.append(text[i + 1 : close])
            quoted = True
            i = close + 1
        elif c == "$" and text.startswith("$(", i):
            close = _closing_paren(text, i + 2, end)
            if close < 0:
                return None
            current.append(text[i : close + 1])
            i = close + 1
        elif c == escape and i + 1 < end:
            current.append(text[i + 1])
            i += 2
        else:
            current.append(c)
            i += 1
        last_end = i
    finish(last_end)
    return tuple(words)


def _operator_at(text: str, i: int, end: int, in_word: bool) -> str | None:
    """A control operator at i; grouping characters only where a word would start."""
    for op in OPERATORS:
        if not text.startswith(op, i) or i + len(op) > end:
            continue
        if op in ("(", ")", "{", "}") and in_word:
            return None
        if op == "&" and (text[i - 1 : i] in (">", "<") or text[i + 1 : i + 2] == ">"):
            return None  # 2>&1, &> file: redirections, not operators
        return op
    return None


def _is_continuation(text: str, i: int, end: int) -> bool:
    j = i + 1
    while j < end and text[j] in " \t":
        j += 1
    return j >= end or text[j] in "\r\n"


def _line_end(text: str, i: int, end: int) -> int:
    newline = text.find("\n", i, end)
    return end if newline < 0 else newline + 1


def _closing_quote(text: str, i: int, end: int) -> int:
    quote = text[i]
    j = i + 1
    while j < end:
        if text[j] == quote:
            return j
        if quote != "'" and text[j] == "\\":
            j += 2
            continue
        j += 1
    return -1


def _closing_paren(text: str, i: int, end: int) -> int:
    depth = 1
    j = i
    while j < end:
        c = text[j]
        if c in "'\"`":
            close = _closing_quote(text, j, end)
            if close < 0:
                return -1
            j = close + 1
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    return -1


def split_commands(words: tuple[Word, ...]) -> tuple[Command, ...]:
    """Simple commands in order; operators and grouping separate them."""
    commands: list[Command] = []
    current: list[Word] = []
    for word in words + (Word(";", -1, -1, operator=True),):
        if word.operator or (not current and word.text in ("(", ")", "{", "}")):
            if current:
                assignments = []
                rest = list(current)
                while rest and _is_assignment(rest[0]):
                    assignments.append(rest.pop(0))
                commands.append(Command(tuple(assignments), tuple(rest)))
            current = []
            continue
        current.append(word)
    return tuple(commands)


def _is_assignment(word: Word) -> bool:
    name, sep, _ = word.text.partition("=")
    return bool(sep) and name.replace("_", "a").isalnum() and not name[0].isdigit()
