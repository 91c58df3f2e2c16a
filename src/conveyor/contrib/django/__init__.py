"""A Django Tasks backend on conveyor: Django 6's `django.tasks`, or the `django_tasks` backport
on Django 5.2.

```python
INSTALLED_APPS = [..., "conveyor.contrib.django"]         # manage.py conveyor_worker, ...
TASKS = {"default": {"BACKEND": "conveyor.contrib.django.ConveyorBackend"}}
```

See docs/integrations/django.md. The backend is imported on first use, so listing the app in
INSTALLED_APPS imports nothing of Django's Tasks framework until a task needs it."""

from __future__ import annotations

from typing import Any

__all__ = ["ConveyorBackend"]


def __getattr__(name: str) -> Any:
    if name == "ConveyorBackend":
        from conveyor.contrib.django.backend import ConveyorBackend

        return ConveyorBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
