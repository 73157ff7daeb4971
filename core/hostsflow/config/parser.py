"""The hsflowd.conf grammar: text -> a tree of :class:`Block` with line numbers.

This module knows the syntax only (no key names, no types).  The grammar is hsflowd's
(``src/Linux/hsflowconfig.c``):

* ``#`` starts a comment that runs to the end of the line, even inside quotes;
* space, tab, CR, LF, ``=`` and ``;`` separate tokens, so ``key = value``, ``key=value``,
  ``key value`` and ``key value;`` are the same thing;
* ``{`` and ``}`` are tokens of their own even when glued to a word (``collector{ip=1.2.3.4}``);
* ``"..."`` makes one token that may hold separators and braces (regexes); it ends on the same
  line;
* a value may itself hold ``=`` and ``:`` unquoted (``bus = unix:path=/run/dbus/socket``): an
  ``=`` glued on both sides to the value's text continues the value (hsflowd would split
  there and then fail on the rest, so no file it accepts reads differently);
* ``name {`` opens a block (the ``{`` may be on a later line), ``}`` closes it; blocks nest at
  most 3 deep (``sflow { opx { port { } } }``);
* keys match case-insensitively (:attr:`Entry.norm`, :meth:`Block.get`).

Where hsflowd is lenient we are stricter, because a config mistake found at start-up is cheaper
than a silent one: a value must be on the same line as its key, a missing final ``}`` is an
error (hsflowd only logs it), a ``"`` inside a bare word is an error, a token longer than 255
characters is an error (hsflowd truncates it), bytes that are not UTF-8 (read as U+FFFD) are an
error outside comments, and keys are names (``[A-Za-z_][A-Za-z0-9_.-]*``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import attrs

#: deepest block nesting hsflowd accepts (HSP_MAX_CONFIG_DEPTH)
MAX_DEPTH = 3
#: longest token hsflowd reads (HSP_MAX_TOKEN_LEN; it truncates, we refuse)
MAX_TOKEN = 255

_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
# one token: a brace, a quoted string (maybe unterminated), or a bare word; separators skipped
_TOKEN_RE = re.compile(r'[ \t\r\n=;]*(?:([{}])|("[^"]*"?)|([^ \t\r\n=;{}"]+))')


class ConfigError(Exception):
    """A config file mistake.  ``str()`` is exactly ``FILE:LINE: message`` (``FILE: message``
    when the mistake has no line, e.g. an unreadable file), ready to print for the operator."""

    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(file, line, message)
        self.file = file
        self.line = line
        self.message = message

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}: {self.message}"
        return f"{self.file}: {self.message}"


@attrs.frozen
class Entry:
    """One ``key value`` setting.  ``key`` is spelled as in the file; ``norm`` is its lower-case
    form for matching."""

    key: str
    value: str
    line: int
    norm: str = attrs.field(
        default=attrs.Factory(lambda self: self.key.lower(), takes_self=True), eq=False, repr=False
    )


@attrs.define
class Block:
    """A ``name { ... }`` block: its settings and sub-blocks in file order.  The tree's root is a
    Block named ``""`` at line 0 holding the top-level blocks."""

    name: str
    line: int
    file: str
    entries: list[Entry] = attrs.Factory(list)
    blocks: list[Block] = attrs.Factory(list)

    @property
    def norm(self) -> str:
        return self.name.lower()

    def get(self, key: str) -> list[Entry]:
        """Every entry whose key matches ``key`` case-insensitively, in file order."""
        key = key.lower()
        return [e for e in self.entries if e.norm == key]

    def sub(self, name: str) -> list[Block]:
        """Every sub-block named ``name`` (case-insensitive), in file order."""
        name = name.lower()
        return [b for b in self.blocks if b.norm == name]


@attrs.frozen
class Token:
    text: str
    line: int
    kind: str  # "{", "}", "word" or "quoted"
    #: a word that follows the previous token with a single ``=`` and no space in between
    glued: bool = attrs.field(default=False, eq=False)


def tokenize(text: str, file: str) -> Iterator[Token]:
    """Split ``text`` into tokens, dropping comments.  Raises :class:`ConfigError` for an
    unterminated quote or a quote inside a word."""
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.split("#", 1)[0]
        pos, end = 0, len(line)
        after_text = False  # the previous token on this line was a word or a quoted string
        while pos < end:
            m = _TOKEN_RE.match(line, pos)
            if m is None or m.end() == pos:  # only separators left
                break
            start = m.start(m.lastindex or 0)
            glued = after_text and line[pos:start] == "="
            pos = m.end()
            brace, quoted, word = m.groups()
            after_text = not brace
            if len(quoted or word or "") > MAX_TOKEN + (2 if quoted else 0):
                raise ConfigError(file, lineno, f"'{(quoted or word)[:20]}...' is longer than "
                                  f"{MAX_TOKEN} characters")
            if "\ufffd" in (quoted or word or ""):
                raise ConfigError(file, lineno, f"'{quoted or word}' holds bytes that are not "
                                  "UTF-8 (only comments may)")
            if brace:
                yield Token(brace, lineno, brace)
            elif quoted is not None:
                if len(quoted) < 2 or not quoted.endswith('"'):
                    raise ConfigError(file, lineno, 'unterminated quoted string (a "..." ends on '
                                      "its own line and cannot contain '#')")
                yield Token(quoted[1:-1], lineno, "quoted")
            elif word:
                if pos < end and line[pos] == '"':
                    raise ConfigError(file, lineno, f"stray '\"' after '{word}' (put the whole "
                                      "value in quotes)")
                yield Token(word, lineno, "word", glued)


def parse(text: str, file: str) -> Block:
    """Parse config ``text`` (from ``file``, used in messages) into a tree and return its root.

    Raises :class:`ConfigError` on the first syntax error."""
    root = Block("", 0, file)
    stack = [root]
    pending: Token | None = None  # a key/block name waiting for its value or '{'
    last_entry: Entry | None = None
    value_just_read = False  # the previous token was last_entry's value
    for tok in tokenize(text, file):
        if value_just_read and tok.glued and last_entry is not None:
            # ``key = a=b``: the value goes on through the '='
            value = f"{last_entry.value}={tok.text}"
            if len(value) > MAX_TOKEN:
                raise ConfigError(file, tok.line, f"'{value[:20]}...' is longer than "
                                  f"{MAX_TOKEN} characters")
            glued = Entry(last_entry.key, value, last_entry.line)
            stack[-1].entries[-1] = glued
            last_entry = glued
            continue
        value_just_read = False
        if pending is not None:
            if tok.kind == "{":
                if len(stack) > MAX_DEPTH:
                    raise ConfigError(file, tok.line, f"too many nested blocks at '{pending.text}' "
                                      f"(at most {MAX_DEPTH} levels)")
                block = Block(pending.text, pending.line, file)
                stack[-1].blocks.append(block)
                stack.append(block)
                pending = None
                continue
            if tok.kind == "}" or tok.line != pending.line:
                raise ConfigError(file, pending.line, f"missing value for '{pending.text}'")
            last_entry = Entry(pending.text, tok.text, pending.line)
            stack[-1].entries.append(last_entry)
            pending = None
            value_just_read = True
            continue
        if tok.kind == "}":
            if len(stack) == 1:
                raise ConfigError(file, tok.line, "unexpected '}' (no block is open)")
            stack.pop()
        elif tok.kind == "{":
            raise ConfigError(file, tok.line, "unexpected '{' (a block needs a name: name { ... })")
        elif tok.kind == "quoted":
            raise ConfigError(file, tok.line, f"unexpected quoted string \"{tok.text}\" "
                              "(expected a key or a block name)")
        elif not _KEY_RE.match(tok.text):
            if last_entry is not None and last_entry.line == tok.line:
                raise ConfigError(file, tok.line, f"unexpected '{tok.text}' after "
                                  f"'{last_entry.key} = {last_entry.value}' (one value per key)")
            raise ConfigError(file, tok.line, f"unexpected '{tok.text}' (expected a key or a "
                              "block name)")
        else:
            pending = tok
    if pending is not None:
        raise ConfigError(file, pending.line, f"missing value for '{pending.text}'")
    if len(stack) > 1:
        block = stack[-1]
        raise ConfigError(file, block.line, f"'{block.name}' block is never closed (missing '}}' "
                          "before the end of the file)")
    return root
