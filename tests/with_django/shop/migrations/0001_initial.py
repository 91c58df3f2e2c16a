# mypy: disable-error-code="misc,untyped-decorator"
# (Django ships no type information: its classes and decorators are Any here)
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="Order",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("item", models.CharField(max_length=100)),
                ("quantity", models.PositiveIntegerField(default=1)),
                ("confirmed", models.BooleanField(default=False)),
            ],
        ),
    ]
