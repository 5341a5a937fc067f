"""``manage.py`` of the test project, for the tests that run a command as a subprocess.

Like a project's own ``manage.py`` with its Celery app imported by the project package (here
``tests.celery_app``, which a project's ``__init__.py`` would import). The services come from
the ``QS_TEST_*`` variables the test session exports.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    from django.core.management import execute_from_command_line

    import tests.celery_app  # noqa: F401  (the project's Celery app)

    execute_from_command_line(sys.argv)
