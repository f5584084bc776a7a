"""The portable subset of regular expressions a manifest's ``trainable`` may use.

Three claims: the checker accepts exactly the grammar of docs/PROTOCOL.md §2; Python's ``re``
compiles every pattern of it without a warning; and ``re.search`` means what the document says
it means, checked against an independent matcher written from the document's semantics.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedswarm.protocol.errors import ManifestError
from seedswarm.protocol.manifest import Manifest, TaskSpec
from seedswarm.protocol.pattern import MAX_DEPTH, PatternError, check_pattern

VALID = [
    "",
    "bias",
    r"bias|LayerNorm|layer_norm",
    r"ln_f|h\.0\.attn\.c_proj\.weight",
    r"layers\.[0-9]+\.attn",
    r"^transformer\.h\.(0|1)\.mlp\.c_fc\.weight$",
    r"(?:q|k|v)_proj",
    r"[^.]+\.bias$",
    r"h\.[0-9]{1,3}\.",
    r"a{0}b{2,}c{3,5}",
    r"()|x*",
    r"[a-zA-Z_\-\]\[\^\\\&\|\~]",
    r"# ,;:'<>=!@%/`-&~",
    "(" * MAX_DEPTH + ")" * MAX_DEPTH,
    r"\.\^\$\|\?\*\+\(\)\[\]\{\}",
]

INVALID = [
    (r"\d+", 0),  # letter escapes are Unicode classes in Python
    (r"a\w", 1),
    (r"a\s", 1),
    (r"\b", 0),
    ("(?i)bias", 0),  # flags
    ("(?=a)", 0),  # lookahead
    ("(?P<x>a)", 0),  # named group
    (r"(a)\1", 3),
    ("a*?", 2),  # lazy
    ("a++", 2),  # possessive
    ("a**", 2),
    ("a{2}{3}", 4),
    ("*a", 0),
    ("a|+", 2),
    ("^*", 1),
    ("$?", 1),
    ("a{,3}", 1),
    ("a{1001}", 1),
    ("a{3,2}", 1),
    ("a{x}", 1),
    ("a{1", 1),
    ("a}", 1),
    ("a]", 1),
    ("(a", 0),
    ("a)", 1),
    ("[]", 0),
    ("[^]", 0),
    ("[a", 0),
    ("[a-]", 3),
    ("[z-a]", 0),
    ("[a-z&&b]", 4),
    ("[a||b]", 2),
    ("[~~]", 1),
    ("[[a]]", 1),
    ("[a^]", 2),
    ("[a\n]", 2),
    ("é", 0),
    ("a\tb", 1),
    ("\\", 0),
    ("\\é", 0),
    ("(" * (MAX_DEPTH + 1) + ")" * (MAX_DEPTH + 1), MAX_DEPTH),
]


@pytest.mark.parametrize("pattern", VALID)
def test_portable_patterns_are_accepted_and_python_compiles_them_quietly(pattern: str) -> None:
    check_pattern(pattern)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        re.compile(pattern)


@pytest.mark.parametrize(("pattern", "pos"), INVALID)
def test_other_patterns_are_refused_where_they_go_wrong(pattern: str, pos: int) -> None:
    with pytest.raises(PatternError) as info:
        check_pattern(pattern)
    assert info.value.pos == pos


def test_a_manifest_refuses_a_pattern_outside_the_subset() -> None:
    base = Manifest(name="t", model="tiny", base_hash="0" * 64, task=TaskSpec(kind="causal_lm"))
    assert base.replace(trainable=r"layers\.[0-9]+\.").trainable
    with pytest.raises(ManifestError, match="portable"):
        base.replace(trainable=r"layers\.\d+\.")


# == the document's semantics, as an independent matcher ============================================
#
# docs/PROTOCOL.md §2: a pattern is searched in the name (any start position); "." is any
# character but a newline; "^" the start of the name; "$" its end or just before a newline
# that ends it; a class any one character in (or, with "^", not in) its ranges; a quantifier
# repeats its atom n to m times (m unbounded for * + {n,}). Whether a name matches does not
# depend on greedy or lazy choices, so the matcher tries every way.


@dataclass(frozen=True)
class Lit:
    c: str


@dataclass(frozen=True)
class Any_:
    pass


@dataclass(frozen=True)
class Class:
    negated: bool
    ranges: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Group:
    capturing: bool
    branches: tuple[tuple[object, ...], ...]


@dataclass(frozen=True)
class Anchor:
    start: bool


@dataclass(frozen=True)
class Rep:
    atom: object
    lo: int
    hi: int | None
    form: str  # how it is written: "*", "+", "?", "{n}", "{n,}", "{n,m}"


Cont = Callable[[int], bool]


def _one(node: object, name: str, i: int, k: Cont) -> bool:
    if isinstance(node, Lit):
        return i < len(name) and name[i] == node.c and k(i + 1)
    if isinstance(node, Any_):
        return i < len(name) and name[i] != "\n" and k(i + 1)
    if isinstance(node, Class):
        if i >= len(name):
            return False
        inside = any(lo <= name[i] <= hi for lo, hi in node.ranges)
        return inside != node.negated and k(i + 1)
    if isinstance(node, Anchor):
        if node.start:
            return i == 0 and k(i)
        return (i == len(name) or (i == len(name) - 1 and name[i] == "\n")) and k(i)
    if isinstance(node, Group):
        return any(_seq(b, name, i, k) for b in node.branches)
    assert isinstance(node, Rep)
    return _rep(node, name, i, 0, k)


def _rep(node: Rep, name: str, i: int, done: int, k: Cont) -> bool:
    if done >= node.lo and k(i):
        return True
    if node.hi is not None and done >= node.hi:
        return False

    def after(j: int) -> bool:
        # past the minimum, an iteration that matches nothing adds nothing: require progress
        return (done < node.lo or j > i) and _rep(node, name, j, done + 1, k)

    return _one(node.atom, name, i, after)


def _seq(pieces: tuple[object, ...], name: str, i: int, k: Cont) -> bool:
    if not pieces:
        return k(i)
    return _one(pieces[0], name, i, lambda j: _seq(pieces[1:], name, j, k))


def search(pieces: tuple[object, ...], name: str) -> bool:
    return any(_seq(pieces, name, s, lambda _: True) for s in range(len(name) + 1))


# -- rendering the tree as a pattern of the subset --

ALPHABET = "ab._-0"


def _char(c: str, in_class: bool) -> str:
    meta = "\\[]^-&|~" if in_class else "\\.^$|?*+()[]{}"
    return "\\" + c if c in meta or (in_class and not c.isalnum()) else c


def render(node: object) -> str:
    if isinstance(node, Lit):
        return _char(node.c, in_class=False)
    if isinstance(node, Any_):
        return "."
    if isinstance(node, Class):
        body = "".join(
            _char(lo, True) if lo == hi else f"{_char(lo, True)}-{_char(hi, True)}"
            for lo, hi in node.ranges
        )
        return "[" + "^" * node.negated + body + "]"
    if isinstance(node, Anchor):
        return "^" if node.start else "$"
    if isinstance(node, Group):
        inner = "|".join("".join(render(p) for p in b) for b in node.branches)
        return ("(" if node.capturing else "(?:") + inner + ")"
    assert isinstance(node, Rep)
    return render(node.atom) + node.form


chars = st.sampled_from(ALPHABET)
ranges = st.tuples(chars, chars).map(lambda t: (min(t), max(t)))
leaves = st.one_of(
    chars.map(Lit),
    st.just(Any_()),
    st.builds(Class, st.booleans(), st.lists(ranges, min_size=1, max_size=3).map(tuple)),
)


def _reps(atoms: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    def build(atom: object, form: str, n: int, m: int) -> Rep:
        lo, hi = min(n, m), max(n, m)
        if form in "*+?":
            return Rep(atom, {"*": 0, "+": 1, "?": 0}[form], None if form != "?" else 1, form)
        if form == "{n}":
            return Rep(atom, lo, lo, f"{{{lo}}}")
        if form == "{n,}":
            return Rep(atom, lo, None, f"{{{lo},}}")
        return Rep(atom, lo, hi, f"{{{lo},{hi}}}")

    forms = st.sampled_from(["*", "+", "?", "{n}", "{n,}", "{n,m}"])
    return st.builds(build, atoms, forms, st.integers(0, 3), st.integers(0, 3))


def _trees(children: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    branch = st.lists(children, max_size=3).map(tuple)
    group = st.builds(Group, st.booleans(), st.lists(branch, min_size=1, max_size=3).map(tuple))
    return st.one_of(group, _reps(st.one_of(leaves, group)))


pieces = st.recursive(
    st.one_of(leaves, st.builds(Anchor, st.booleans()), _reps(leaves)), _trees, max_leaves=8
)
patterns = st.lists(pieces, max_size=4).map(tuple)
names = st.text(alphabet=ALPHABET + "\n", max_size=7)


@settings(max_examples=400, deadline=None)
@given(patterns, st.lists(names, min_size=1, max_size=6))
def test_python_re_search_means_what_the_document_says(
    tree: tuple[object, ...], sample: list[str]
) -> None:
    pattern = "".join(render(p) for p in tree)
    check_pattern(pattern)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled = re.compile(pattern)
    for name in sample:
        assert (compiled.search(name) is not None) == search(tree, name), (pattern, name)
