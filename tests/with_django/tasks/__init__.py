"""Django's own tests of task backends (tests/tasks of Django 6.1.3's source distribution,
BSD-3-Clause, (c) the Django Software Foundation and contributors), adapted to run against
ConveyorBackend, on Django 6 and on Django 5.2 with the django-tasks backport. Each test keeps
its upstream class and name; tests_X.py adapts test_X.py; LEFT_OUT.md names each test not
adapted, and why. The package keeps its upstream name (`tasks`): test_module_path checks it."""
