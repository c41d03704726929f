import sys
from pathlib import Path

# tests/live_server.py is a helper module shared by the integration tests.
sys.path.insert(0, str(Path(__file__).resolve().parent))
