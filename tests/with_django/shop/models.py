# mypy: disable-error-code="misc,untyped-decorator"
# (Django ships no type information: its classes and decorators are Any here)
"""An order: what the transaction tests write beside a job."""

from __future__ import annotations

from django.db import models


class Order(models.Model):
    item = models.CharField(max_length=100)
    quantity = models.PositiveIntegerField(default=1)
    confirmed = models.BooleanField(default=False)
