#!/usr/bin/env python
"""The test project's manage.py: `python manage.py conveyor_worker`, `check`, ... from
tests/with_django (runtests.py sets the environment the settings read)."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
