"""Parse attention-polynomial specs such as ``"x1*x2 + x2*x3"``.

Grammar (whitespace between variables is also a product)::

    spec     := monomial ("+" monomial)*
    monomial := var ("*"? var)*
    var      := "x" [1-9][0-9]*

A hand-written tokenizer, never ``eval``. Every error is a :class:`PolynomialSyntaxError` that
shows the spec with a caret under the offending column. Parsed strings are cached.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from ..errors import PolyAttentionError, PolynomialSyntaxError
from .core import AttentionPolynomial

__all__ = ["parse"]

_VAR = re.compile(r"[xX](\d+)")


@dataclass(frozen=True)
class _Tok:
    kind: str  # "var" | "*" | "+"
    col: int
    width: int
    value: int = 0


def _tokenize(spec: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(spec)
    while i < n:
        ch = spec[i]
        if ch.isspace():
            i += 1
            continue
        if ch in "*+":
            toks.append(_Tok(ch, i, 1))
            i += 1
            continue
        m = _VAR.match(spec, i)
        if m:
            digits = m.group(1)
            if ch == "X":
                raise PolynomialSyntaxError("variables are lower-case: write x1, not X1", spec, i)
            if digits.startswith("0"):
                if int(digits) == 0:
                    raise PolynomialSyntaxError(
                        "variables are numbered from x1 (x1 is the query); x0 does not exist",
                        spec, i, m.end() - i,
                    )
                raise PolynomialSyntaxError(
                    f"variable index with a leading zero; write x{int(digits)}", spec, i, m.end() - i
                )
            toks.append(_Tok("var", i, m.end() - i, int(digits)))
            i = m.end()
            continue
        if ch == "-":
            raise PolynomialSyntaxError(
                "minus signs are not allowed: every monomial has coefficient +1", spec, i
            )
        if ch.isdigit() or ch == ".":
            j = i
            while j < n and (spec[j].isdigit() or spec[j] == "."):
                j += 1
            raise PolynomialSyntaxError(
                "coefficients are not allowed: every monomial has coefficient 1", spec, i, j - i
            )
        if ch == "^":
            raise PolynomialSyntaxError(
                "powers are not allowed: poly-attention polynomials are multilinear", spec, i
            )
        if ch == "x":
            raise PolynomialSyntaxError("expected a variable index after 'x', e.g. x1", spec, i)
        j = i
        while j < n and (spec[j].isalnum() or spec[j] == "_"):
            j += 1
        raise PolynomialSyntaxError(
            f"unknown symbol {spec[i:max(j, i + 1)]!r}: expected variables x1, x2, ... joined by '*' and '+'",
            spec, i, max(j - i, 1),
        )
    return toks


def _parse(spec: str) -> AttentionPolynomial:
    if not isinstance(spec, str):
        raise PolyAttentionError(
            f"a polynomial is a string like 'x1*x2 + x2*x3' or an AttentionPolynomial, got {type(spec).__name__}"
        )
    if not spec.strip():
        raise PolynomialSyntaxError("empty polynomial: write at least one monomial, e.g. x1*x2", spec, 0)
    toks = _tokenize(spec)
    monomials: list[list[_Tok]] = [[]]
    prev: _Tok | None = None
    for tok in toks:
        if tok.kind == "var":
            monomials[-1].append(tok)
        elif tok.kind == "*":
            if prev is None or prev.kind != "var":
                raise PolynomialSyntaxError("'*' must follow a variable", spec, tok.col)
        else:  # "+"
            if prev is None or prev.kind != "var":
                raise PolynomialSyntaxError("'+' must follow a monomial", spec, tok.col)
            monomials.append([])
        prev = tok
    if prev is not None and prev.kind != "var":
        raise PolynomialSyntaxError(
            f"dangling '{prev.kind}' at the end: a variable must follow it", spec, prev.col
        )
    seen: dict[tuple[int, ...], _Tok] = {}
    for mono in monomials:
        vars_seen: dict[int, _Tok] = {}
        for tok in mono:
            if tok.value in vars_seen:
                raise PolynomialSyntaxError(
                    f"x{tok.value} appears twice in one monomial; poly-attention polynomials are "
                    "multilinear (each variable at most once per monomial)",
                    spec, tok.col, tok.width,
                )
            vars_seen[tok.value] = tok
        if len(mono) < 2:
            tok = mono[0]
            raise PolynomialSyntaxError(
                f"monomial x{tok.value} has degree 1: every monomial needs at least two variables "
                "(a degree-1 term would only reweight tokens)",
                spec, tok.col, tok.width,
            )
        key = tuple(sorted(vars_seen))
        if key in seen:
            start = mono[0].col
            end = mono[-1].col + mono[-1].width
            raise PolynomialSyntaxError(
                "duplicate monomial: it already appears earlier (coefficients are always 1)",
                spec, start, end - start,
            )
        seen[key] = mono[0]
    return AttentionPolynomial([list(k) for k in seen])


@lru_cache(maxsize=1024)
def _parse_cached(spec: str) -> AttentionPolynomial:
    return _parse(spec)


def parse(spec: str | AttentionPolynomial) -> AttentionPolynomial:
    """Parse ``spec`` into a canonical :class:`AttentionPolynomial` (idempotent on polynomials).

    >>> str(parse("x2*x3 + x1 x2"))
    'x1*x2 + x2*x3'
    """
    if isinstance(spec, AttentionPolynomial):
        return spec
    if not isinstance(spec, str):
        raise PolyAttentionError(
            "polynomial must be a string like 'x1*x2 + x2*x3' or an AttentionPolynomial, "
            f"got {type(spec).__name__}"
        )
    return _parse_cached(spec)
