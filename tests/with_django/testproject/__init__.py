"""A small Django project for conveyor's Django backend: its settings and test runner."""
