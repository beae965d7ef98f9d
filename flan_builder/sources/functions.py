"""Synthetic regression tables for LIFT's function-approximation experiments (torch-free).

The families and their defaults are those of LIFT's code (Dinh et al., NeurIPS 2022;
``regression/utils/regressionDataGen.py`` in UW-Madison-Lee-Lab/LanguageInterfacedFineTuning):
inputs drawn uniformly from [-10, 10] in every coordinate; the target of a p-dimensional
input is the mean over its coordinates of a 1-D function scaled to about [-9, 9]; training
targets get Gaussian noise with standard deviation 0.1 x the standard deviation of the
noise-free targets; test targets are noise-free; 200 training and 100 test rows.

A user's own function is a Python expression of ``x1`` (and ``x2``), read by a checked
evaluator over :mod:`ast`: only numbers, the names x1, x2, pi and e, arithmetic operators
and a whitelist of math functions; everything is computed in floats (so a huge power
overflows at once instead of running for hours) and a constant exponent above
``MAX_EXPONENT`` is refused before anything is evaluated. It is never passed to ``eval``.
"""

from __future__ import annotations

import ast
import math
import random
import statistics
from collections.abc import Callable
from typing import Any

from flan_builder.errors import FlanError

DEFAULTS: dict[str, Any] = {"dim": 1, "noise": 0.1, "low": -10.0, "high": 10.0, "n_train": 200, "n_test": 100,
                            "data_seed": 0}
MAX_DIM = 2
MAX_EXPONENT = 100  # a larger constant exponent is refused (LIFT's families use at most 2)
MAX_EXPRESSION_CHARS = 500
MAX_ROWS = 100_000


def _piecewise_1d(x: float) -> float:
    y = x + 6 if x < -3.0 else 0.0 if x < 3.0 else x - 6
    return ((y + 4) / 8 - 0.5) * 18


_EXP_LOW, _EXP_HIGH = math.exp(-2), math.exp(2)

# name -> the 1-D function; a p-dimensional input's target is the mean over its coordinates
# (LIFT's linear is x . beta / p with beta = 0.9: the same mean).
FAMILIES: dict[str, Callable[[float], float]] = {
    "linear": lambda x: 0.9 * x,
    "quadratic": lambda x: (x * x - 50) * 9 / 50,
    "exponential": lambda x: ((math.exp(0.2 * x) - _EXP_LOW) / (_EXP_HIGH - _EXP_LOW) - 0.5) * 18,
    "cosine": lambda x: 9 * math.cos(0.5 * math.pi * x),
    "l1norm": lambda x: (abs(x) / 10 - 0.5) * 18,
    "piecewise": _piecewise_1d,
}
FORMULAS: dict[str, str] = {
    "linear": "0.9 x", "quadratic": "0.18 x^2 - 9",
    "exponential": "18 ((e^(0.2x) - e^-2) / (e^2 - e^-2) - 0.5)",
    "cosine": "9 cos(pi x / 2)", "l1norm": "1.8 |x| - 9",
    "piecewise": "18 ((p(x) + 4) / 8 - 0.5), p(x) = x + 6 below -3, 0 up to 3, x - 6 above",
}

# -- a user's expression ---------------------------------------------------------------------------

# name -> (function, number of arguments, or None for one or more)
FUNCTIONS: dict[str, tuple[Callable[..., float], int | None]] = {
    "abs": (math.fabs, 1), "sqrt": (math.sqrt, 1), "exp": (math.exp, 1), "log": (math.log, 1),
    "log2": (math.log2, 1), "log10": (math.log10, 1), "sin": (math.sin, 1), "cos": (math.cos, 1),
    "tan": (math.tan, 1), "asin": (math.asin, 1), "acos": (math.acos, 1), "atan": (math.atan, 1),
    "sinh": (math.sinh, 1), "cosh": (math.cosh, 1), "tanh": (math.tanh, 1), "floor": (math.floor, 1),
    "ceil": (math.ceil, 1), "atan2": (math.atan2, 2), "hypot": (math.hypot, 2), "min": (min, None),
    "max": (max, None),
}
CONSTANTS = {"pi": math.pi, "e": math.e}
INPUTS = ("x1", "x2")
_BINARY = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
           ast.Pow: lambda a, b: a ** b}
_UNARY = {ast.UAdd: lambda a: +a, ast.USub: lambda a: -a}
_WHAT = {ast.Attribute: "attribute access (.)", ast.Lambda: "a lambda", ast.Subscript: "indexing ([...])",
         ast.Compare: "a comparison", ast.BoolOp: "and/or", ast.IfExp: "if/else",
         ast.ListComp: "a comprehension", ast.GeneratorExp: "a comprehension", ast.SetComp: "a comprehension",
         ast.DictComp: "a comprehension", ast.List: "a list", ast.Tuple: "a tuple", ast.Dict: "a dict",
         ast.Set: "a set", ast.JoinedStr: "an f-string", ast.NamedExpr: "an assignment (:=)",
         ast.Starred: "unpacking (*)", ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield"}
_HINT = (f"use numbers, {', '.join(INPUTS)}, pi, e, + - * / // % ** and "
         f"{', '.join(FUNCTIONS)}")


class Expression:
    """A checked arithmetic expression of x1, x2; call it with a point to get a float."""

    def __init__(self, text: str) -> None:
        self.text = text
        if len(text) > MAX_EXPRESSION_CHARS:
            self._refuse(f"it is {len(text)} characters long (at most {MAX_EXPRESSION_CHARS})")
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as exc:
            self._refuse(f"it is not a Python expression ({exc.msg})")
        except (ValueError, RecursionError, MemoryError) as exc:  # e.g. an integer of 5,000 digits
            self._refuse(f"it cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})")
        self.tree = tree.body
        self.names: set[str] = set()
        self._check(self.tree, depth=0)

    def _refuse(self, why: str) -> None:
        raise FlanError(f"--function {self.text[:120]!r}: {why}; {_HINT}")

    def _check(self, node: ast.AST, depth: int) -> None:
        if depth > 50:
            self._refuse("it is nested more than 50 levels deep")
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                self._refuse(f"the constant {node.value!r} is not allowed (only numbers)")
        elif isinstance(node, ast.Name):
            if node.id in FUNCTIONS:
                self._refuse(f"{node.id} is a function: call it, e.g. {node.id}(x1)")
            if node.id not in INPUTS and node.id not in CONSTANTS:
                self._refuse(f"the name {node.id!r} is not allowed (the inputs are {' and '.join(INPUTS)})")
            if node.id in INPUTS:
                self.names.add(node.id)
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                self._refuse(f"the operator {type(node.op).__name__} is not allowed")
            if isinstance(node.op, ast.Pow):
                exponent = self._constant_exponent(node.right, depth)
                if exponent is not None and not abs(exponent) <= MAX_EXPONENT:
                    self._refuse(f"the power ** {exponent:g} is too large (at most {MAX_EXPONENT})")
            self._check(node.left, depth + 1)
            self._check(node.right, depth + 1)
        elif isinstance(node, ast.UnaryOp):
            if type(node.op) not in _UNARY:
                self._refuse(f"the operator {type(node.op).__name__} is not allowed")
            self._check(node.operand, depth + 1)
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                self._refuse("attribute access (.) is not allowed" if isinstance(node.func, ast.Attribute)
                             else "only the listed functions may be called, by name")
            name = node.func.id
            if name not in FUNCTIONS:
                self._refuse(f"the function {name!r} is not allowed")
            if node.keywords:
                self._refuse(f"{name}() takes no keyword arguments")
            arity = FUNCTIONS[name][1]
            if (arity is None and not node.args) or (arity is not None and len(node.args) != arity):
                wanted = "at least 1" if arity is None else str(arity)
                self._refuse(f"{name}() takes {wanted} argument(s), got {len(node.args)}")
            for arg in node.args:
                self._check(arg, depth + 1)
        else:
            self._refuse(f"{_WHAT.get(type(node), type(node).__name__)} is not allowed")

    def _constant_exponent(self, node: ast.AST, depth: int) -> float | None:
        """An exponent without x1 / x2 (2 ** -500, 9 ** 9 ** 9), worked out in floats; else None."""
        if any(isinstance(n, ast.Name) and n.id in INPUTS for n in ast.walk(node)):
            return None
        self._check(node, depth + 1)  # only allowed parts, before anything is computed
        try:
            return _evaluate(node, {})
        except OverflowError:
            return math.inf
        except (ArithmeticError, ValueError):
            return None  # 1 / 0 and the like fail when the function is computed, naming the point

    def __call__(self, point: dict[str, float]) -> float:
        try:
            value = _evaluate(self.tree, point)
        except (ArithmeticError, ValueError) as exc:  # 1/0, a domain error, an overflow
            where = ", ".join(f"{k}={v:g}" for k, v in point.items())
            raise FlanError(f"--function {self.text[:120]!r} fails at {where} ({exc}); change the "
                            "expression or the input range (--x-range)") from None
        if not math.isfinite(value):
            where = ", ".join(f"{k}={v:g}" for k, v in point.items())
            raise FlanError(f"--function {self.text[:120]!r} gives {value} at {where}; change the "
                            "expression or the input range (--x-range)")
        return value


def _evaluate(node: ast.AST, point: dict[str, float]) -> float:
    if isinstance(node, ast.Constant):
        return float(node.value)  # floats only: 9 ** 9 ** 9 overflows instead of computing a huge int
    if isinstance(node, ast.Name):
        return point[node.id] if node.id in INPUTS else CONSTANTS[node.id]
    if isinstance(node, ast.BinOp):
        value = _BINARY[type(node.op)](_evaluate(node.left, point), _evaluate(node.right, point))
        if isinstance(value, complex):  # (-8) ** 0.5
            raise ValueError("a negative number to a fractional power")
        return float(value)
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_evaluate(node.operand, point))
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    return float(FUNCTIONS[node.func.id][0](*(_evaluate(a, point) for a in node.args)))


# -- the table ----------------------------------------------------------------------------------

def from_text(text: str) -> dict[str, str]:
    """``--function`` TEXT: a family name, or else an expression of x1 (and x2)."""
    text = text.strip()
    if text in FAMILIES:
        return {"name": text}
    if text.isidentifier() and text not in INPUTS:
        raise FlanError(f"--function {text!r}: not a LIFT family ({', '.join(FAMILIES)}) nor an expression "
                        "of x1 (and x2), e.g. --function 'sin(x1) + 0.5 * x2'")
    return {"expression": text}


def settings(raw: dict[str, Any]) -> dict[str, Any]:
    """A function source's settings checked, with LIFT's defaults filled in."""
    out = {**DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    unknown = set(out) - set(DEFAULTS) - {"name", "expression"}
    if unknown:
        raise FlanError(f"function source: unknown setting(s) {', '.join(sorted(unknown))}; known: "
                        f"name, expression, {', '.join(DEFAULTS)}")
    if ("name" in out) == ("expression" in out):
        raise FlanError(f"function source: give a family name ({', '.join(FAMILIES)}) or an expression")
    if "name" in out and out["name"] not in FAMILIES:
        raise FlanError(f"--function {out['name']!r} is neither a LIFT family ({', '.join(FAMILIES)}) nor "
                        "an expression of x1 (and x2)")
    if "expression" in out:
        used = Expression(str(out["expression"])).names
        if "x2" in used and raw.get("dim") == 1:
            raise FlanError(f"--function {out['expression']!r} uses x2 but --dim is 1; use --dim 2")
        if raw.get("dim") is None:
            out["dim"] = 2 if "x2" in used else 1
    for key in ("dim", "n_train", "n_test", "data_seed"):
        if isinstance(out[key], bool) or not isinstance(out[key], int):
            raise FlanError(f"function source: {key} must be a whole number (got {out[key]!r})")
    if out["dim"] not in range(1, MAX_DIM + 1):
        raise FlanError(f"--dim must be 1 or 2 (got {out['dim']})")
    if out["n_train"] < 2 or out["n_test"] < 1 or out["n_train"] + out["n_test"] > MAX_ROWS:
        raise FlanError(f"--function-rows needs at least 2 training rows and 1 test row, at most "
                        f"{MAX_ROWS:,} in all (got {out['n_train']},{out['n_test']})")
    for key in ("noise", "low", "high"):
        if type(out[key]) not in (int, float) or not math.isfinite(out[key]):
            raise FlanError(f"function source: {key} must be a number (got {out[key]!r})")
        out[key] = float(out[key])
    if out["noise"] < 0:
        raise FlanError(f"--noise must be >= 0 (got {out['noise']:g})")
    if not out["low"] < out["high"]:
        raise FlanError(f"--x-range LOW,HIGH needs LOW < HIGH (got {out['low']:g},{out['high']:g})")
    return out


def target_function(config: dict[str, Any]) -> Callable[[list[float]], float]:
    """x (a list of dim floats) -> the noise-free target."""
    if "expression" in config:
        expression = Expression(str(config["expression"]))
        return lambda x: expression(dict(zip(INPUTS, x, strict=False)))
    one = FAMILIES[config["name"]]
    return lambda x: statistics.fmean(one(v) for v in x)


def describe(config: dict[str, Any]) -> str:
    """One line for reports: the function, dimension, noise, range and row counts."""
    what = f"y = {config['expression']}" if "expression" in config else \
        f"{config['name']} (per coordinate: {FORMULAS[config['name']]}; mean over coordinates)"
    return (f"{what}; {config['dim']}-D inputs uniform on [{config['low']:g}, {config['high']:g}]; "
            f"training targets + N(0, ({config['noise']:g} x std of y)^2), test targets noise-free; "
            f"{config['n_train']} training + {config['n_test']} test rows, data seed {config['data_seed']}")


def task_name(config: dict[str, Any]) -> str:
    return f"function_{config.get('name', 'custom')}_{config['dim']}d"


def function_data(raw: dict[str, Any]) -> dict[str, Any]:
    """The synthetic table's parts: n_train + n_test inputs, noisy targets, and the noise-free ones
    (``tables.function_table`` makes the Table; this module stays below ``tables``).

    Every row is drawn the same way; the seeded split (``test_size`` = n_test rows) decides
    which are test rows, and a test row is scored against its noise-free target
    (``Table.clean_target``), as LIFT does.
    """
    config = settings(raw)
    truth_of = target_function(config)
    rng = random.Random(f"lift-function:{config['data_seed']}")
    n = config["n_train"] + config["n_test"]
    rows = [[rng.uniform(config["low"], config["high"]) for _ in range(config["dim"])] for _ in range(n)]
    truth = [truth_of(x) for x in rows]
    spread = statistics.pstdev(truth) if n > 1 else 0.0
    noisy = [t + rng.gauss(0.0, config["noise"] * spread) for t in truth]
    return {"name": task_name(config), "features": list(INPUTS[:config["dim"]]), "rows": rows,
            "target": noisy, "description": f"synthetic: {describe(config)}", "clean_target": truth}


def grid(config: dict[str, Any], points: int = 400) -> tuple[list[float], list[float]]:
    """A dense grid over a 1-D function's input range and the noise-free targets on it (for plots)."""
    config = settings(config)
    truth_of = target_function(config)
    xs = [config["low"] + (config["high"] - config["low"]) * i / (points - 1) for i in range(points)]
    return xs, [truth_of([x]) for x in xs]
