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
