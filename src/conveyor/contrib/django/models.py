"""No models: conveyor's tables are its own, made by its migrations. The module exists so that
Django sends this app `post_migrate`, on which `manage.py migrate` migrates the stores too
(see apps.py)."""
