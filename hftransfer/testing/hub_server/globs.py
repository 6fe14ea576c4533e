"""Git-style glob matching (`.gitattributes`, `.gitignore`) in linear time: a lazily built DFA, no regular
expressions, and limits on pattern count, pattern length and matching work per request."""

from __future__ import annotations

from .common import HfTransferError

MAX_GLOB_PATTERNS = 1000  # lines of a .gitattributes / .gitignore (or a preupload's gitIgnore) that are honoured


MAX_GLOB_LENGTH = 1024  # characters of one pattern


MAX_GLOB_TEXT = 256 * 1024  # bytes of a preupload's gitIgnore


# Automaton steps one request may spend on patterns that need the general matcher (each step is a cached
# dictionary lookup per character: ~0.1 us). Beyond it the request is refused instead of occupying a thread.
MATCH_BUDGET = 10_000_000


class GlobTooExpensive(HfTransferError):
    """Matching these patterns against these paths would exceed the request's budget."""


class _Budget:
    __slots__ = ("left",)

    def __init__(self, steps: int = MATCH_BUDGET) -> None:
        self.left = steps

    def spend(self, steps: int) -> None:
        self.left -= steps
        if self.left < 0:
            raise GlobTooExpensive(f"matching needs more than {MATCH_BUDGET} steps")


_LIT, _ANY, _CLASS, _STAR, _DSTAR, _OPT = range(6)


def _parse_class(pattern: str, start: int) -> tuple[tuple[bool, frozenset[str], tuple[tuple[str, str], ...]], int]:
    """Parse `[...]` starting after the `[`; returns ((negate, chars, ranges), index after `]`) or raises ValueError."""
    i, negate = start, False
    if i < len(pattern) and pattern[i] in "!^":
        negate, i = True, i + 1
    chars: set[str] = set()
    ranges: list[tuple[str, str]] = []
    first = True
    while i < len(pattern):
        char = pattern[i]
        if char == "]" and not first:
            return (negate, frozenset(chars), tuple(ranges)), i + 1
        if char == "\\" and i + 1 < len(pattern):
            i += 1
            char = pattern[i]
        if i + 2 < len(pattern) and pattern[i + 1] == "-" and pattern[i + 2] != "]":
            ranges.append((char, pattern[i + 2]))
            i += 3
        else:
            chars.add(char)
            i += 1
        first = False
    raise ValueError("unclosed '['")


class Glob:
    """One git-style glob, matched by a lazily built DFA (linear in the subject's length, no backtracking).

    `*` and `?` and `[...]` never match `/`; `**/` matches zero or more folders, `/**` at the end everything below,
    any other `**` any string. A backslash escapes the next character.
    """

    __slots__ = ("pattern", "_tokens", "_kind", "_parts", "_literal", "_dfa", "_start")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        tokens: list[tuple] = []
        i = 0
        while i < len(pattern):
            char = pattern[i]
            if pattern.startswith("**/", i):
                tokens += [(_OPT, len(tokens) + 3), (_DSTAR,), (_LIT, "/")]
                i += 3
            elif pattern.startswith("**", i):
                tokens.append((_DSTAR,))
                i += 2
            elif char == "*":
                tokens.append((_STAR,))
                i += 1
            elif char == "?":
                tokens.append((_ANY,))
                i += 1
            elif char == "[":
                try:
                    klass, i = _parse_class(pattern, i + 1)
                    tokens.append((_CLASS, klass))
                except ValueError:  # an unclosed bracket is a literal, as in git
                    tokens.append((_LIT, "["))
                    i += 1
            elif char == "\\" and i + 1 < len(pattern):
                tokens.append((_LIT, pattern[i + 1]))
                i += 2
            else:
                tokens.append((_LIT, char))
                i += 1
        self._tokens = tokens
        # Fast paths, matched with str methods in C: a literal, or literals separated by `*` (no `/` in the subject
        # then, since `*` cannot cross it: callers only use them for basenames).
        kinds = {token[0] for token in tokens}
        self._parts: list[str] = []
        self._literal = "".join(token[1] for token in tokens) if kinds <= {_LIT} else ""
        if kinds <= {_LIT}:
            self._kind = "literal"
        elif kinds <= {_LIT, _STAR, _DSTAR} and "/" not in pattern:
            self._kind = "stars"
            parts, current = [], []
            for token in tokens:
                if token[0] == _LIT:
                    current.append(token[1])
                else:
                    parts.append("".join(current))
                    current = []
            parts.append("".join(current))
            self._parts = parts
        else:
            self._kind = "dfa"
        self._dfa: dict[tuple[frozenset[int], str], frozenset[int]] = {}
        self._start = self._closure({0})

    def _closure(self, states: set[int]) -> frozenset[int]:
        stack, seen = list(states), set(states)
        while stack:
            index = stack.pop()
            if index >= len(self._tokens):
                continue
            token = self._tokens[index]
            targets = (
                (index + 1,) if token[0] in (_STAR, _DSTAR) else (index + 1, token[1]) if token[0] == _OPT else ()
            )
            for target in targets:
                if target not in seen:
                    seen.add(target)
                    stack.append(target)
        return frozenset(seen)

    def _step(self, states: frozenset[int], char: str) -> frozenset[int]:
        key = (states, char)
        found = self._dfa.get(key)
        if found is not None:
            return found
        following: set[int] = set()
        for index in states:
            if index >= len(self._tokens):
                continue
            token = self._tokens[index]
            kind = token[0]
            if kind == _LIT:
                if char == token[1]:
                    following.add(index + 1)
            elif kind == _ANY:
                if char != "/":
                    following.add(index + 1)
            elif kind == _CLASS:
                negate, chars, ranges = token[1]
                hit = char in chars or any(low <= char <= high for low, high in ranges)
                if hit != negate and char != "/":
                    following.add(index + 1)
            elif kind == _STAR:
                if char != "/":
                    following.add(index)
            elif kind == _DSTAR:
                following.add(index)
        result = self._closure(following)
        if len(self._dfa) < 4096:  # bounded cache; beyond it each step is computed (still no backtracking)
            self._dfa[key] = result
        return result

    def match(self, subject: str, budget: _Budget | None = None) -> bool:
        """Whether the whole `subject` matches."""
        if self._kind == "literal":
            return subject == self._literal
        if self._kind == "stars" and "/" not in subject:
            if budget is not None:
                budget.spend(4 + len(subject) // 64)
            return _match_stars(self._parts, subject)
        return len(self._tokens) in self._run(subject, budget)[-1]

    def match_prefixes(self, subject: str, budget: _Budget | None = None) -> list[bool]:
        """For each '/'-separated prefix of `subject` (`a`, `a/b`, `a/b/c`), whether it matches: one pass."""
        ends = [end for end, char in enumerate(subject + "/") if char == "/"]
        if self._kind == "literal":
            return [end == len(self._literal) and subject.startswith(self._literal) for end in ends]
        states = self._run(subject, budget)
        accept = len(self._tokens)
        return [accept in states[end] for end in ends]

    def _run(self, subject: str, budget: _Budget | None) -> list[frozenset[int]]:
        """The DFA state before each character and at the end (`states[k]` = after `subject[:k]`)."""
        if budget is not None:
            budget.spend(2 * (len(subject) + 1))
        states, current = [self._start], self._start
        for char in subject:
            current = self._step(current, char) if current else current
            states.append(current)
        return states


def _match_stars(parts: list[str], subject: str) -> bool:
    """Match literals separated by stars (`parts` from splitting on `*`), greedily: O(len(subject)) with str.find."""
    if len(parts) == 1:
        return subject == parts[0]
    first, last = parts[0], parts[-1]
    if len(subject) < len(first) + len(last) or not subject.startswith(first) or not subject.endswith(last):
        return False
    position, end = len(first), len(subject) - len(last)
    for middle in parts[1:-1]:
        found = subject.find(middle, position, end)
        if found < 0:
            return False
        position = found + len(middle)
    return True


class _PatternSet:
    """Ordered git-style patterns where the last match wins (gitattributes `filter=lfs`, gitignore with `!`).

    At most `MAX_GLOB_PATTERNS` patterns of at most `MAX_GLOB_LENGTH` characters are kept; `skipped` counts the
    others (a preupload's own `gitIgnore` is refused then; a committed file is honoured up to the limit).
    """

    def __init__(self) -> None:
        self._rules: list[tuple[Glob, bool, bool, bool]] = []  # glob, value, basename_only, dir_only
        self.skipped = 0

    def add(self, pattern: str, value: bool) -> None:
        if len(self._rules) >= MAX_GLOB_PATTERNS or len(pattern) > MAX_GLOB_LENGTH:
            self.skipped += 1
            return
        dir_only = pattern.endswith("/")
        pattern = pattern.rstrip("/")
        anchored = "/" in pattern
        pattern = pattern.lstrip("/")
        if pattern:
            self._rules.append((Glob(pattern), value, not anchored, dir_only))

    def match(self, path: str, budget: _Budget | None = None) -> bool | None:
        parts = path.split("/")
        for glob, value, basename_only, dir_only in reversed(self._rules):  # the last matching rule wins
            # A pattern matching a parent directory applies to everything below it (gitignore semantics).
            if basename_only:
                hit = any(glob.match(part, budget) for part in (parts[:-1] if dir_only else parts))
            else:
                hits = glob.match_prefixes(path, budget)
                hit = any(hits[:-1] if dir_only else hits)
            if hit:
                return value
        return None

    @classmethod
    def from_gitattributes(cls, text: str) -> _PatternSet:
        patterns = cls()
        for line in text.splitlines():
            tokens = line.split()
            if not tokens or tokens[0].startswith("#"):
                continue
            for attribute in tokens[1:]:
                if attribute.startswith("filter="):
                    patterns.add(tokens[0], attribute == "filter=lfs")
                elif attribute in ("-filter", "!filter"):
                    patterns.add(tokens[0], False)
        return patterns

    @classmethod
    def from_gitignore(cls, text: str) -> _PatternSet:
        patterns = cls()
        for line in text.splitlines():
            line = line.rstrip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("!"):
                patterns.add(line[1:], False)
            else:
                patterns.add(line.removeprefix("\\"), True)
        return patterns
