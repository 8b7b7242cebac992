"""Modules past ~400 lines and functions past ~80 lines are listed in docs/layout.md with the reason they stay so;
a new one fails here until it is split or listed."""

from __future__ import annotations

import ast
import re

from tests.support.imports import PROJECT_PACKAGES, ROOT

MODULE_LINES, FUNCTION_LINES = 400, 80
LAYOUT = (ROOT / "docs" / "layout.md").read_text()
# a table row: | `path` | ... or | `path` `function` ... |
LISTED = re.compile(r"^\| `(?P<path>[\w/]+\.py)`(?: `(?P<function>\w+)`)?", re.MULTILINE)


def long_functions_of(tree: ast.AST, path: str, enclosing: tuple[str, ...] = ()) -> set[tuple[str, str, tuple]]:
    """(path, name, the names of the functions around it) of each function past the limit, nested ones too."""
    found = set()
    for node in ast.iter_child_nodes(tree):
        inner = enclosing
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if node.end_lineno - node.lineno + 1 > FUNCTION_LINES:
                found.add((path, node.name, enclosing))
            inner = (*enclosing, node.name)
        found |= long_functions_of(node, path, inner)
    return found


def past_the_limits() -> tuple[set[str], set[tuple[str, str, tuple]]]:
    modules, functions = set(), set()
    for package in PROJECT_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative, source = str(path.relative_to(ROOT)), path.read_text()
            if len(source.splitlines()) > MODULE_LINES:
                modules.add(relative)
            functions |= long_functions_of(ast.parse(source), relative)
    return modules, functions


def listed() -> tuple[set[str], set[tuple[str, str]]]:
    modules, functions = set(), set()
    for match in LISTED.finditer(LAYOUT):
        if match["function"]:
            functions.add((match["path"], match["function"]))
        else:
            modules.add(match["path"])
    return modules, functions


def test_every_module_and_function_past_the_limits_is_listed_with_a_reason():
    (big_modules, long_functions), (listed_modules, listed_functions) = past_the_limits(), listed()
    assert big_modules - listed_modules == set(), "split them, or list them in docs/layout.md with the reason"
    # a function inside a listed one (a route inside the app factory) is covered by its parent's row
    unlisted = {
        (path, name)
        for path, name, enclosing in long_functions
        if not any((path, outer) in listed_functions for outer in (*enclosing, name))
    }
    assert unlisted == set(), "split them, or list them in docs/layout.md with the reason"


def test_the_list_names_only_what_is_past_the_limits():
    (big_modules, long_functions), (listed_modules, listed_functions) = past_the_limits(), listed()
    assert listed_modules - big_modules == set(), "within the limit now: take it off docs/layout.md's list"
    long = {(path, name) for path, name, _ in long_functions}
    assert listed_functions - long == set(), "within the limit now: take it off docs/layout.md's list"


def test_a_nested_long_function_is_found_with_what_encloses_it():
    body = "\n".join(f"    x{i} = {i}" for i in range(FUNCTION_LINES))
    tree = ast.parse(f"def outer():\n    def inner():\n    {body.replace(chr(10), chr(10) + '    ')}\n    return 1\n")
    assert long_functions_of(tree, "m.py") == {("m.py", "outer", ()), ("m.py", "inner", ("outer",))}
