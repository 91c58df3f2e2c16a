"""Django management commands of conveyor's Django app."""
