# The Django Tasks backend (conveyor.contrib.django), tested in two virtualenvs of its own so the
# project's .venv never sees Django: .venv-django6 (Django 6, django.tasks; Python >= 3.12, found
# by scripts/python-for-django.sh) and .venv-django52 (Django 5.2 LTS with the django-tasks
# backport; $(PYTHON), 3.11 is enough). Included from the Makefile; `make test-django` runs both.
DJANGO6_VENV := .venv-django6
DJANGO52_VENV := .venv-django52
# Django's own tests of task backends (tests/tasks in its source distribution), which
# tests/with_django/tasks adapts: kept here so the test run can check every one is adapted or
# listed as left out (tests/with_django/tasks/LEFT_OUT.md).
DJANGO_UPSTREAM_VERSION := 6.1.3
DJANGO_UPSTREAM := $(DJANGO6_VENV)/django-$(DJANGO_UPSTREAM_VERSION)-tests

.PHONY: test-django test-django6 test-django52

$(DJANGO6_VENV)/.installed: pyproject.toml requirements-django.txt requirements-django6.txt
	python="$$(scripts/python-for-django.sh)" && "$$python" -m venv $(DJANGO6_VENV)
	$(DJANGO6_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DJANGO6_VENV)/bin/python -m pip install --quiet -r requirements-django6.txt
	$(DJANGO6_VENV)/bin/python -m pip install --quiet --no-deps -e .
	rm -rf $(DJANGO_UPSTREAM) && mkdir -p $(DJANGO_UPSTREAM)
	$(DJANGO6_VENV)/bin/python -m pip download --quiet --no-deps --no-binary :all: \
		--dest $(DJANGO_UPSTREAM) django==$(DJANGO_UPSTREAM_VERSION)
	tar -xzf $(DJANGO_UPSTREAM)/django-$(DJANGO_UPSTREAM_VERSION).tar.gz -C $(DJANGO_UPSTREAM) \
		--strip-components=2 django-$(DJANGO_UPSTREAM_VERSION)/tests/tasks
	rm $(DJANGO_UPSTREAM)/django-$(DJANGO_UPSTREAM_VERSION).tar.gz
	touch $@

$(DJANGO52_VENV)/.installed: pyproject.toml requirements-django.txt requirements-django52.txt
	$(PYTHON) -m venv $(DJANGO52_VENV)
	$(DJANGO52_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DJANGO52_VENV)/bin/python -m pip install --quiet -r requirements-django52.txt
	$(DJANGO52_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

# Each runs the Django project's tests and the adapted Django suite twice: on a SQLite file and
# on PostgreSQL (127.0.0.1:5432, database test, schemas of the run's own, dropped afterwards;
# unreachable, it fails under CI=true and is skipped otherwise). DJANGO_TEST_ARGS go to
# tests/with_django/runtests.py (`--store sqlite`, a test label, `-v 2`, ...).
test-django6: $(DJANGO6_VENV)/.installed
	$(DJANGO6_VENV)/bin/python tests/with_django/runtests.py --upstream $(DJANGO_UPSTREAM) $(DJANGO_TEST_ARGS)

test-django52: $(DJANGO52_VENV)/.installed
	$(DJANGO52_VENV)/bin/python tests/with_django/runtests.py $(DJANGO_TEST_ARGS)

test-django: test-django6 test-django52
