"""Pricing expressions: a small, safe, exact language over usage metrics.

``input_tokens * 0.0025 + output_tokens * 0.01 + search_queries * 0.5`` prices a usage. The
source is parsed by Python's ``ast`` (mode ``eval``) and checked against an allowlist of node
types, names and functions; the checked tree is compiled into closures once per process
(``compile_expression`` is cached by source text), so the hot path never parses.

Exact and bounded by construction:
- every value is a ``Decimal``; numeric literals are read from their source text, never through
  ``float``; evaluation runs in a local context of 40 significant digits and exponents within
  ±60, where overflow, invalid operations and division by zero raise ``ExpressionError``;
- the source is at most ``MAX_SOURCE`` ASCII characters, the tree at most ``MAX_NODES`` nodes
  and ``MAX_DEPTH`` levels deep, literals at most ``MAX_LITERAL_DIGITS`` digits, and ``**``
  takes only an integer literal exponent from 0 to ``MAX_POWER``. There are no loops, so an
  evaluation does at most a few hundred operations on 40-digit numbers.

The function set and its semantics follow the ducto library (``ceil``, ``floor``, half-up
``round``, ``min``, ``max``, ``if(c, a, b)``, ``tier(x, t1, r1, ..., default)``,
``clamp(x, lo, hi)``, ``percentile(p, v1, ...)``); ``//`` and ``%`` truncate toward zero as
``Decimal`` does (and as ducto does).
"""

from __future__ import annotations

import ast
import decimal
import io
import keyword
import tokenize
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

METRICS: tuple[str, ...] = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "tool_calls",
    "search_queries",
    "search_results",
    "web_search_calls",
    "code_exec_calls",
    "images",
    "audio_seconds",
    "requests",
)
# name: (fewest arguments, most arguments or None)
FUNCTIONS: dict[str, tuple[int, int | None]] = {
    "ceil": (1, 1),
    "floor": (1, 1),
    "round": (1, 2),
    "min": (1, None),
    "max": (1, None),
    "if": (3, 3),
    "tier": (4, None),
    "clamp": (3, 3),
    "percentile": (2, None),
}
MAX_SOURCE = 2000
MAX_NODES = 300
MAX_DEPTH = 24
MAX_LITERAL_DIGITS = 24
MAX_LITERAL_EXPONENT = 24
MAX_POWER = 8
MAX_ROUND_DIGITS = 12

_CONTEXT = decimal.Context(
    prec=40,
    rounding=decimal.ROUND_HALF_EVEN,
    Emax=60,
    Emin=-60,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)
_ONE = Decimal(1)
_ZERO = Decimal(0)
_HUNDRED = Decimal(100)
# ``if`` is a Python keyword: ``if(`` in call position is rewritten to this name of the same
# length (so error columns stay right), and accepted only where the rewrite put it.
_IF_NAME = "i_"


class ExpressionError(ValueError):
    """An expression refused at validation, or an evaluation that cannot give a number."""

    def __init__(self, reason: str, line: int | None = None, column: int | None = None) -> None:
        self.reason = reason
        self.line = line
        self.column = column
        where = f" at line {line}, column {column}" if line is not None else ""
        super().__init__(f"{reason}{where}")


Value = Decimal
Node = Callable[[Mapping[str, Decimal]], Decimal]


@dataclass(frozen=True)
class Expression:
    """A checked expression, ready to evaluate."""

    source: str
    names: tuple[str, ...]  # the metrics it reads, in METRICS order
    _run: Node

    def evaluate(self, variables: Mapping[str, Decimal]) -> Decimal:
        """The exact value for these metric values (missing metrics are 0); not rounded."""
        values = {name: variables.get(name, _ZERO) for name in self.names}
        try:
            with decimal.localcontext(_CONTEXT):
                result = self._run(values)
                return +result  # rounds to the context (40 digits) once more
        except ExpressionError:
            raise
        except (ArithmeticError, ValueError, TypeError) as exc:  # decimal signals
            raise ExpressionError(_arith_reason(exc)) from None


def _arith_reason(exc: BaseException) -> str:
    if isinstance(exc, decimal.DivisionByZero | ZeroDivisionError):
        return "division or modulo by zero"
    if isinstance(exc, decimal.Overflow):
        return "the result is too large"
    return "the arithmetic is undefined for these values (e.g. 0/0 or a modulo by zero)"


def _bool(value: bool) -> Decimal:
    return _ONE if value else _ZERO


# ---- functions (ducto semantics, Decimal only) -------------------------------------------


def _ceil(x: Decimal) -> Decimal:
    return x.to_integral_value(rounding=decimal.ROUND_CEILING)


def _floor(x: Decimal) -> Decimal:
    return x.to_integral_value(rounding=decimal.ROUND_FLOOR)


def _round(x: Decimal, digits: Decimal = _ZERO) -> Decimal:
    if digits != digits.to_integral_value() or abs(digits) > MAX_ROUND_DIGITS:
        raise ExpressionError(
            f"round(): the digits must be an integer from -{MAX_ROUND_DIGITS} to {MAX_ROUND_DIGITS}"
        )
    return x.quantize(_ONE.scaleb(-int(digits)), rounding=decimal.ROUND_HALF_UP)


def _tier(*args: Decimal) -> Decimal:
    # tier(x, t1, r1, t2, r2, ..., default): r_i of the first threshold with x < t_i.
    value = args[0]
    for i in range(1, len(args) - 1, 2):
        if value < args[i]:
            return args[i + 1]
    return args[-1]


def _clamp(x: Decimal, lo: Decimal, hi: Decimal) -> Decimal:
    return max(lo, min(x, hi))  # lo wins when lo > hi, as in ducto


def _percentile(p: Decimal, *values: Decimal) -> Decimal:
    if p < 0 or p > _HUNDRED:
        raise ExpressionError("percentile(): p must be from 0 to 100")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = p / _HUNDRED * (len(ordered) - 1)
    lower = int(rank.to_integral_value(rounding=decimal.ROUND_FLOOR))
    upper = min(lower + 1, len(ordered) - 1)
    frac = rank - lower
    return ordered[lower] * (_ONE - frac) + ordered[upper] * frac


def _min(*args: Decimal) -> Decimal:
    return min(args)


def _max(*args: Decimal) -> Decimal:
    return max(args)


_IMPLS: dict[str, Callable[..., Decimal]] = {
    "ceil": _ceil,
    "floor": _floor,
    "round": _round,
    "min": _min,
    "max": _max,
    "tier": _tier,
    "clamp": _clamp,
    "percentile": _percentile,
}


# ---- parsing and checking ---------------------------------------------------------------


def _rewrite_if(source: str) -> tuple[str, frozenset[tuple[int, int]]]:
    """Rename ``if(`` in call position (after an operator, ``(``, ``,`` or a keyword, or at
    the start) to ``i_(``; a ternary ``a if (c) else b`` keeps its keyword."""
    try:
        tokens = [
            t
            for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT)
        ]
    except (tokenize.TokenError, SyntaxError):
        return source, frozenset()  # the parser reports the error with its position
    at: list[tuple[int, int]] = []
    for i, tok in enumerate(tokens):
        if tok.type != tokenize.NAME or tok.string != "if":
            continue
        if i + 1 >= len(tokens) or tokens[i + 1].string != "(":
            continue
        prev = tokens[i - 1] if i else None
        value_end = prev is not None and (
            prev.type in (tokenize.NUMBER, tokenize.STRING)
            or prev.string in (")", "]", "}")
            or (prev.type == tokenize.NAME and not keyword.iskeyword(prev.string))
        )
        if not value_end:
            at.append(tok.start)
    if not at:
        return source, frozenset()
    lines = source.split("\n")
    for row, col in at:
        line = lines[row - 1]
        lines[row - 1] = line[:col] + _IF_NAME + line[col + 2 :]
    return "\n".join(lines), frozenset((row, col) for row, col in at)


def _check_text(source: str) -> None:
    if not source.strip():
        raise ExpressionError("the expression is empty", 1, 1)
    if len(source) > MAX_SOURCE:
        raise ExpressionError(f"the expression is longer than {MAX_SOURCE} characters")
    line, col = 1, 1
    for ch in source:
        if ch == "\n":
            line, col = line + 1, 1
            continue
        if not (" " <= ch <= "~" or ch in "\t\r"):
            raise ExpressionError(f"character {ch!r} is not allowed (ASCII only)", line, col)
        col += 1


class _Compiler:
    def __init__(self, source: str, if_calls: frozenset[tuple[int, int]]) -> None:
        self.source = source
        self.if_calls = if_calls
        self.nodes = 0
        self.names: set[str] = set()

    def fail(self, node: ast.AST, reason: str) -> ExpressionError:
        line = getattr(node, "lineno", None)
        col = getattr(node, "col_offset", None)
        return ExpressionError(reason, line, None if col is None else col + 1)

    def compile(self, node: ast.AST, depth: int) -> Node:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(node, f"the expression has more than {MAX_NODES} parts")
        if depth > MAX_DEPTH:
            raise self.fail(node, f"the expression nests deeper than {MAX_DEPTH} levels")
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise self.fail(node, _refusal(node))
        result: Node = method(node, depth + 1)
        return result

    def _Constant(self, node: ast.Constant, depth: int) -> Node:
        if isinstance(node.value, bool):
            value = _bool(node.value)
            return lambda v: value
        if not isinstance(node.value, int | float):
            raise self.fail(node, "only numbers are allowed as literals")
        text = ast.get_source_segment(self.source, node) or ""
        try:
            value = Decimal(text)
        except decimal.InvalidOperation:
            raise self.fail(node, f"{text!r} is not a decimal number") from None
        if not value.is_finite():  # pragma: no cover - the grammar has no inf/nan literals
            raise self.fail(node, "the number must be finite")
        digits = len(value.as_tuple().digits)
        if digits > MAX_LITERAL_DIGITS or abs(value.adjusted()) > MAX_LITERAL_EXPONENT:
            raise self.fail(
                node,
                f"the number {text} is out of range (at most {MAX_LITERAL_DIGITS} digits and "
                f"magnitudes from 1e-{MAX_LITERAL_EXPONENT} to 1e{MAX_LITERAL_EXPONENT})",
            )
        return lambda v: value

    def _Name(self, node: ast.Name, depth: int) -> Node:
        name = node.id
        if name not in METRICS:
            if name in FUNCTIONS or name == _IF_NAME:
                raise self.fail(node, f"{name!r} is a function: call it")
            raise self.fail(node, f"unknown name {name!r}; the metrics are {', '.join(METRICS)}")
        self.names.add(name)
        return lambda v: v[name]

    def _UnaryOp(self, node: ast.UnaryOp, depth: int) -> Node:
        operand = self.compile(node.operand, depth)
        if isinstance(node.op, ast.USub):
            return lambda v: -operand(v)
        if isinstance(node.op, ast.UAdd):
            return lambda v: +operand(v)
        if isinstance(node.op, ast.Not):
            return lambda v: _bool(not operand(v))
        raise self.fail(node, "the operator ~ is not allowed")

    def _BinOp(self, node: ast.BinOp, depth: int) -> Node:
        op = node.op
        left = self.compile(node.left, depth)
        if isinstance(op, ast.Pow):
            exponent = node.right
            if not (
                isinstance(exponent, ast.Constant)
                and type(exponent.value) is int
                and 0 <= exponent.value <= MAX_POWER
            ):
                raise self.fail(
                    node.right,
                    f"the exponent of ** must be an integer literal from 0 to {MAX_POWER}",
                )
            self.nodes += 1
            power = exponent.value
            return lambda v: left(v) ** power
        right = self.compile(node.right, depth)
        if isinstance(op, ast.Add):
            return lambda v: left(v) + right(v)
        if isinstance(op, ast.Sub):
            return lambda v: left(v) - right(v)
        if isinstance(op, ast.Mult):
            return lambda v: left(v) * right(v)
        if isinstance(op, ast.Div):
            return lambda v: left(v) / right(v)
        if isinstance(op, ast.FloorDiv):
            return lambda v: left(v) // right(v)
        if isinstance(op, ast.Mod):
            return lambda v: left(v) % right(v)
        raise self.fail(node, f"the operator {type(op).__name__} is not allowed")

    def _BoolOp(self, node: ast.BoolOp, depth: int) -> Node:
        parts = [self.compile(value, depth) for value in node.values]
        if isinstance(node.op, ast.And):

            def and_(v: Mapping[str, Decimal]) -> Decimal:
                result = _ZERO
                for part in parts:
                    result = part(v)
                    if not result:
                        return result
                return result

            return and_

        def or_(v: Mapping[str, Decimal]) -> Decimal:
            result = _ZERO
            for part in parts:
                result = part(v)
                if result:
                    return result
            return result

        return or_

    def _Compare(self, node: ast.Compare, depth: int) -> Node:
        tests: dict[type[ast.cmpop], Callable[[Decimal, Decimal], bool]] = {
            ast.Eq: Decimal.__eq__,
            ast.NotEq: Decimal.__ne__,
            ast.Lt: Decimal.__lt__,
            ast.LtE: Decimal.__le__,
            ast.Gt: Decimal.__gt__,
            ast.GtE: Decimal.__ge__,
        }
        ops = []
        for op in node.ops:
            test = tests.get(type(op))
            if test is None:
                raise self.fail(node, "only ==, !=, <, <=, > and >= compare")
            ops.append(test)
        first = self.compile(node.left, depth)
        rest = [self.compile(c, depth) for c in node.comparators]

        def compare(v: Mapping[str, Decimal]) -> Decimal:
            left = first(v)
            for test, part in zip(ops, rest, strict=True):
                right = part(v)
                if not test(left, right):
                    return _ZERO
                left = right
            return _ONE

        return compare

    def _IfExp(self, node: ast.IfExp, depth: int) -> Node:
        cond = self.compile(node.test, depth)
        then = self.compile(node.body, depth)
        other = self.compile(node.orelse, depth)
        return lambda v: then(v) if cond(v) else other(v)

    def _Call(self, node: ast.Call, depth: int) -> Node:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else None
        if name == _IF_NAME and (func.lineno, func.col_offset) in self.if_calls:
            name = "if"
        elif name not in _IMPLS:
            what = name if name is not None else ast.get_source_segment(self.source, func)
            raise self.fail(
                node, f"unknown function {what!r}; the functions are {', '.join(FUNCTIONS)}"
            )
        assert name is not None
        if node.keywords:
            raise self.fail(node.keywords[0], f"{name}() takes no keyword arguments")
        lo, hi = FUNCTIONS[name]
        count = len(node.args)
        if count < lo or (hi is not None and count > hi) or (name == "tier" and count % 2):
            raise self.fail(node, _arity(name))
        args = []
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.fail(arg, "* arguments are not allowed")
            args.append(self.compile(arg, depth))
        if name == "percentile":
            p = node.args[0]
            sign = 1
            if isinstance(p, ast.UnaryOp) and isinstance(p.op, ast.USub | ast.UAdd):
                sign = -1 if isinstance(p.op, ast.USub) else 1
                p = p.operand
            literal = isinstance(p, ast.Constant) and not isinstance(p.value, bool)
            if (
                literal
                and not 0 <= sign * Decimal(ast.get_source_segment(self.source, p) or 0) <= 100
            ):
                raise self.fail(p, "percentile(): p must be from 0 to 100")
        if name == "if":
            cond, then, other = args
            return lambda v: then(v) if cond(v) else other(v)
        impl = _IMPLS[name]
        if len(args) == 1:
            (only,) = args
            return lambda v: impl(only(v))
        return lambda v: impl(*(a(v) for a in args))


def _arity(name: str) -> str:
    return {
        "ceil": "ceil(x) takes 1 argument",
        "floor": "floor(x) takes 1 argument",
        "round": "round(x) or round(x, digits) takes 1 or 2 arguments",
        "min": "min(a, ...) takes at least 1 argument",
        "max": "max(a, ...) takes at least 1 argument",
        "if": "if(condition, then, else) takes exactly 3 arguments",
        "tier": "tier(value, t1, r1, [t2, r2, ...], default) takes an even number (>= 4) "
        "of arguments",
        "clamp": "clamp(x, lo, hi) takes exactly 3 arguments",
        "percentile": "percentile(p, v1, ...) takes at least 2 arguments",
    }[name]


_REFUSALS: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access (.) is not allowed",
    ast.Subscript: "subscripts ([]) are not allowed",
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.NamedExpr: "assignment (:=) is not allowed",
    ast.Starred: "* is not allowed",
    ast.List: "lists are not allowed",
    ast.Tuple: "tuples are not allowed",
    ast.Dict: "dicts are not allowed",
    ast.Set: "sets are not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
    ast.Slice: "slices are not allowed",
}


def _refusal(node: ast.AST) -> str:
    return _REFUSALS.get(type(node), f"{type(node).__name__} is not allowed")


def _parse(text: str) -> tuple[_Compiler, Node]:
    text, if_calls = _rewrite_if(text)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(
            f"syntax error: {exc.msg}", exc.lineno or 1, max(exc.offset or 1, 1)
        ) from None
    except (RecursionError, MemoryError, ValueError):
        raise ExpressionError("the expression nests too deeply") from None
    compiler = _Compiler(text, if_calls)
    return compiler, compiler.compile(tree.body, 0)


@lru_cache(maxsize=2048)
def compile_expression(source: str) -> Expression:
    """Check ``source`` and compile it; cached per process by source text (stored expressions
    are re-used by every usage call). Raises ``ExpressionError`` with the position and reason."""
    _check_text(source)
    # The eval grammar refuses leading blanks: parse without them, report columns with them.
    shift = len(source) - len(source.lstrip(" \t"))
    try:
        compiler, run = _parse(source[shift:])
    except ExpressionError as exc:
        if exc.line == 1 and exc.column is not None:
            raise ExpressionError(exc.reason, 1, exc.column + shift) from None
        raise
    if not compiler.names:
        raise ExpressionError(
            "the expression uses no metric (e.g. input_tokens); a fixed price is a job", 1, 1
        )
    names = tuple(n for n in METRICS if n in compiler.names)
    return Expression(source, names, run)


# A usage reporting no counts at all (one request): what a completion without tokens prices.
_NO_COUNTS = {name: Decimal(1) if name == "requests" else _ZERO for name in METRICS}


def validate(source: str) -> Expression:
    """``compile_expression``, for validators (the same cache), that must also price a usage
    with no counts: an expression failing there (``input_tokens / output_tokens``) is refused
    when it is published, not at a completion that has nothing else to charge."""
    compiled = compile_expression(source)
    try:
        compiled.evaluate(_NO_COUNTS)
    except ExpressionError as exc:
        raise ExpressionError(
            f"the expression cannot price a usage with no counts (every metric 0, requests 1):"
            f" {exc.reason}; guard the divisor, e.g. max(output_tokens, 1)",
            1,
            1,
        ) from None
    return compiled
