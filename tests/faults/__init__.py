"""The fault suite: real `conveyor worker` processes under kill -9, SIGTERM, SIGSTOP, hung and
restarted servers, a full disk, jumped clocks and poison outcomes, judged by an independent
journal (see journal.py and checker.py). Opt out with `pytest -m "not faults"`."""
