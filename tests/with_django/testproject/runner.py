# mypy: disable-error-code="misc,untyped-decorator"
# (Django ships no type information: its classes and decorators are Any here)
"""The test runner: Django's, on the database as it is (keepdb: the run's tables live in schemas
or files of its own, which runtests.py makes and removes), writing what it ran to
CONVEYOR_DJANGO_SUMMARY for runtests.py to add up."""

from __future__ import annotations

import json
import os
from typing import Any

from django.test.runner import DiscoverRunner


class ConveyorTestRunner(DiscoverRunner):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["keepdb"] = True
        super().__init__(*args, **kwargs)

    def get_databases(self, suite: Any) -> Any:
        """The default database always: conveyor's store is in it (or named after it), whether
        or not the tests that run use Django's ORM."""
        databases = super().get_databases(suite)
        databases.setdefault("default", False)
        return databases

    def setup_test_environment(self, **kwargs: Any) -> None:
        super().setup_test_environment(**kwargs)
        from conveyor.logging import configure_logging

        # the workers the tests run log every job; shown from -v 2 on
        configure_logging("INFO" if self.verbosity >= 2 else "CRITICAL", cache=False)

    def suite_result(self, suite: Any, result: Any, **kwargs: Any) -> int:
        summary = os.environ.get("CONVEYOR_DJANGO_SUMMARY")
        if summary:
            failed = len(result.failures) + len(result.errors)
            failed += len(getattr(result, "unexpectedSuccesses", []))
            skipped = len(result.skipped)
            counts = {
                "ran": result.testsRun,
                "failed": failed,
                "skipped": skipped,
                "passed": result.testsRun - failed - skipped,
            }
            with open(summary, "w") as out:
                json.dump(counts, out)
        return int(super().suite_result(suite, result, **kwargs))
