"""The portable regular expressions a manifest's ``trainable`` may use (docs/PROTOCOL.md §2).

A run names its trainable parameters by a regular expression searched in each parameter's
name. Every node must pick the same parameters, in any language, so a run may use only a small
subset of Python's ``re`` whose meaning every regex engine shares, written out here as a
grammar (and in the document):

    regex  = branch ( "|" branch )*
    branch = piece*
    piece  = "^" | "$" | atom quant?
    atom   = char | "." | escape | class | "(" regex ")" | "(?:" regex ")"
    quant  = "*" | "+" | "?" | "{" n "}" | "{" n ",}" | "{" n "," m "}"      0 <= n <= m <= 1000
    class  = "[" "^"? item+ "]"
    item   = cchar ( "-" cchar )?                                            first <= last
    char   = printable ASCII (0x20-0x7E) but  \\ . ^ $ | ? * + ( ) [ ] { }
    cchar  = escape | printable ASCII but  \\ [ ] ^ - & | ~
    escape = "\\" followed by ASCII punctuation (that character itself)

Groups nest at most ``MAX_DEPTH`` deep. Left out on purpose: ``\\d \\w \\s`` and the other
letter escapes (Python's are Unicode classes), flags, lazy and possessive quantifiers,
lookaround, backreferences, and the characters Python would warn about in a class.

The checker is a recursive-descent parser that accepts exactly the grammar; Python's ``re``
then compiles the pattern with the same meaning.
"""

from __future__ import annotations

MAX_DEPTH = 32  # nested groups
MAX_REPEAT = 1000  # the largest n or m of a {n,m} quantifier

_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_META = frozenset("\\.^$|?*+()[]{}")
_CLASS_META = frozenset("\\[]^-&|~")


class PatternError(ValueError):
    """A pattern outside the portable subset; ``pos`` is where it goes wrong."""

    def __init__(self, message: str, pos: int) -> None:
        super().__init__(f"{message} at position {pos}")
        self.pos = pos


def check_pattern(pattern: str) -> None:
    """Raise ``PatternError`` unless ``pattern`` is in the portable subset."""
    p = _Parser(pattern)
    p.regex(0)
    if p.pos != len(pattern):  # only an unmatched ")" stops a regex early
        raise PatternError("an unmatched ')'", p.pos)


def _printable(c: str) -> bool:
    return " " <= c <= "~"


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def _peek(self, k: int = 0) -> str:
        i = self.pos + k
        return self.text[i] if i < len(self.text) else ""

    def regex(self, depth: int) -> None:
        self.branch(depth)
        while self._peek() == "|":
            self.pos += 1
            self.branch(depth)

    def branch(self, depth: int) -> None:
        while (c := self._peek()) and c not in "|)":
            if c in "^$":
                self.pos += 1
                if (q := self._peek()) and q in "*+?{":
                    raise PatternError("a quantifier after an anchor", self.pos)
                continue
            self.atom(depth)
            self.quant()

    def atom(self, depth: int) -> None:
        c = self._peek()
        start = self.pos
        if c == "(":
            if depth >= MAX_DEPTH:
                raise PatternError(f"groups nested deeper than {MAX_DEPTH}", start)
            self.pos += 1
            if self._peek() == "?":
                if self._peek(1) != ":":
                    raise PatternError("a group other than '(' or '(?:'", start)
                self.pos += 2
            self.regex(depth + 1)
            if self._peek() != ")":
                raise PatternError("a '(' without its ')'", start)
            self.pos += 1
        elif c == "[":
            self.klass()
        elif c == "\\":
            self.escape()
        elif c == ".":
            self.pos += 1
        elif c in "*+?{":
            raise PatternError("a quantifier with nothing to repeat", start)
        elif c in _META or not _printable(c):
            raise PatternError(f"the character {c!r} (escape it, or leave it out)", start)
        else:
            self.pos += 1

    def escape(self) -> str:
        c = self._peek(1)
        if c not in _PUNCTUATION or not c:
            raise PatternError(f"the escape \\{c} (only \\ before ASCII punctuation)", self.pos)
        self.pos += 2
        return c

    def quant(self) -> None:
        c = self._peek()
        if c in ("*", "+", "?") and c:
            self.pos += 1
        elif c == "{":
            start = self.pos
            self.pos += 1
            n = self.number(start)
            m = n
            if self._peek() == ",":
                self.pos += 1
                m = MAX_REPEAT if self._peek() == "}" else self.number(start)
            if self._peek() != "}":
                raise PatternError("a '{' that is not {n}, {n,} or {n,m}", start)
            self.pos += 1
            if n > m:
                raise PatternError(f"a repeat {{{n},{m}}} whose n exceeds its m", start)
        else:
            return
        if (q := self._peek()) and q in "*+?{":
            raise PatternError("a quantifier after a quantifier", self.pos)

    def number(self, start: int) -> int:
        digits = ""
        while (c := self._peek()) and c.isascii() and c.isdigit():
            digits += c
            self.pos += 1
        if not digits or len(digits) > 4 or int(digits) > MAX_REPEAT:
            raise PatternError(f"a repeat count that is not 0 to {MAX_REPEAT}", start)
        return int(digits)

    def klass(self) -> None:
        start = self.pos
        self.pos += 1
        if self._peek() == "^":
            self.pos += 1
        items = 0
        while self._peek() != "]":
            if not self._peek():
                raise PatternError("a '[' without its ']'", start)
            first = self.cchar()
            if self._peek() == "-":
                self.pos += 1
                if self._peek() == "]":
                    raise PatternError("a '-' that ends a class (write \\-)", self.pos)
                last = self.cchar()
                if first > last:
                    raise PatternError(f"the range {first}-{last} runs backwards", start)
            items += 1
        if not items:
            raise PatternError("an empty class", start)
        self.pos += 1

    def cchar(self) -> str:
        c = self._peek()
        if c == "\\":
            return self.escape()
        if c in _CLASS_META or not _printable(c):
            raise PatternError(f"the character {c!r} in a class (escape it)", self.pos)
        self.pos += 1
        return c
