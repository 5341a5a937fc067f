"""The integration-test harness: real services, fault proxies, Celery workers and web servers.

``services``, ``faults``, ``workers`` and ``webservers`` depend neither on pytest nor on Django
settings, so the benchmarks use them too; their processes and ports come from
``qs_dev.processes``. ``suite`` holds the helpers the tests share (pytest and the test settings).
"""
