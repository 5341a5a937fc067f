"""The integration-test harness: real services, fault proxies, Celery workers and web servers.

Nothing here depends on pytest or on Django settings, so the benchmarks use it too.
"""
