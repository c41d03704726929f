import os
import sys
from pathlib import Path

from hypothesis import settings

# tests/live_server.py is a helper module shared by the integration tests.
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The default suite (`make test`, CI) draws the same examples on every run, so a failure it shows
# is one anyone can rerun; LYNX_TEST_THOROUGH=1 draws fresh, and more, examples each time.
settings.register_profile("reproducible", derandomize=True)
settings.register_profile("thorough", derandomize=False)
settings.load_profile("thorough" if os.environ.get("LYNX_TEST_THOROUGH") == "1" else "reproducible")


def pytest_collection_modifyitems(config, items):
    """Files with slow or container tests first. pytest-xdist (`--dist loadfile`) hands files to its
    workers in collection order, so the long ones start early and the many short ones fill the end,
    rather than one long module running alone while the other worker idles."""
    long_files = {item.path for item in items
                  if item.get_closest_marker("slow") or item.get_closest_marker("containers")}
    items.sort(key=lambda item: item.path not in long_files)  # stable: each file keeps its order
