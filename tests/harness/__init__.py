"""The integration-test harness: real services, fault proxies, Celery workers and web servers.

``services``, ``faults``, ``workers``, ``webservers`` and ``rawhttp`` (HTTP on a plain socket)
depend neither on pytest nor on Django settings, so the benchmarks use them too; their
processes and ports come from ``qs_dev.processes``. ``suite`` holds the helpers the tests share
(pytest and the test settings), among them the test project's web servers.
"""
