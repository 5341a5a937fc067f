"""Development tooling shared by the tests, the benchmarks and the example's launcher.

Not part of the distribution (``setup.cfg`` packages ``queued_storage`` only).
"""
