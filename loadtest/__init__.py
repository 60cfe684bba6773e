"""Locust load tests against the kit's Triton server.

`python -m loadtest` (what `make loadtest` runs) starts Locust headless for one model and one
protocol, step by step, and writes a report folder: Locust's CSV and HTML, a plot of throughput
and latency per step, and a JSON summary with the server-side breakdown of each step.

The Locust side lives in `locustfile.py` (users and the load shape) and reads its settings from
the environment (`settings.py`), so forked worker processes see the same run.
"""
