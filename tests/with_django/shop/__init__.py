"""A small app with Django tasks, the way a project writes them, and the tests of the backend
through it."""
