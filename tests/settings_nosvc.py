"""The test settings without starting any service (for mypy, makemigrations --check)."""

from __future__ import annotations

import os

os.environ.setdefault("QS_TEST_NO_SERVICES", "1")

from tests.settings import *  # noqa: F403
