"""Every test of Django's tests/tasks is adapted here or named in LEFT_OUT.md, and LEFT_OUT.md
names no test upstream does not have: checked against the upstream files runtests.py was
pointed to (--upstream; `make test-django` unpacks them from Django's source distribution)."""

# mypy: disable-error-code="misc"
# (Django ships no type information: its test cases are Any here)
from __future__ import annotations

import ast
import os
import re
from pathlib import Path

from django.test import SimpleTestCase

HERE = Path(__file__).resolve().parent
LEFT_OUT_ROW = re.compile(r"^\| `(test_\w+\.py::\w+::\w+)` \|", re.MULTILINE)


def tests_of(path: Path) -> set[str]:
    """`Class::test_name` of each test method in a module."""
    tree = ast.parse(path.read_text())
    return {
        f"{node.name}::{item.name}"
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        for item in node.body
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
        and item.name.startswith("test")
    }


class UpstreamCoverageTests(SimpleTestCase):
    def setUp(self) -> None:
        upstream = os.environ.get("CONVEYOR_DJANGO_UPSTREAM", "")
        if not upstream:
            self.skipTest("needs Django's tests/tasks: runtests.py --upstream DIR")
        self.upstream = Path(upstream) / "tasks"
        self.assertTrue(self.upstream.is_dir(), f"no tests/tasks in {upstream}")

    def upstream_tests(self) -> set[str]:
        return {
            f"{path.name}::{test}"
            for path in sorted(self.upstream.glob("test_*.py"))
            for test in tests_of(path)
        }

    def adapted_tests(self) -> set[str]:
        adapted: set[str] = set()
        for path in sorted(HERE.glob("tests_*.py")):
            upstream_name = "test_" + path.name.removeprefix("tests_")
            adapted |= {f"{upstream_name}::{test}" for test in tests_of(path)}
        return adapted

    def left_out(self) -> set[str]:
        return set(LEFT_OUT_ROW.findall((HERE / "LEFT_OUT.md").read_text()))

    def test_every_upstream_test_is_adapted_or_left_out_with_a_reason(self) -> None:
        missing = self.upstream_tests() - self.adapted_tests() - self.left_out()
        self.assertEqual(sorted(missing), [], "adapt these, or say in LEFT_OUT.md why not")

    def test_nothing_is_both_adapted_and_left_out(self) -> None:
        self.assertEqual(sorted(self.adapted_tests() & self.left_out()), [])

    def test_left_out_names_only_upstream_tests(self) -> None:
        stale = self.left_out() - self.upstream_tests()
        self.assertEqual(sorted(stale), [], "LEFT_OUT.md names tests upstream does not have")
