"""`python -m helpers.warm_touch PATH`: write PATH (a request of the warm server's tests that
shows it has run)."""

import sys
from pathlib import Path

Path(sys.argv[1]).write_text("ran")
