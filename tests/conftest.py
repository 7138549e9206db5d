"""The test session's environment; helpers and fixtures are in edgeopt_testkit (loaded below as a plugin)."""
from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# bench/deploy store every result in a history database: keep the tests' results out of the user's one
os.environ.setdefault("EDGEOPT_HISTORY", os.path.join(tempfile.mkdtemp(prefix="edgeopt-test-history-"),
                                                      "results.sqlite"))

# tests/ is on sys.path (pytest's default "prepend" import mode: the folder has no __init__.py)
pytest_plugins = ["edgeopt_testkit.fixtures"]
