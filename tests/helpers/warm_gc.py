"""`python -m helpers.warm_gc PATH`: write to PATH, as JSON, how the garbage collector stands in
this process (a warm server's worker: collecting, the server's objects left out)."""

import gc
import json
import sys
from pathlib import Path

Path(sys.argv[1]).write_text(json.dumps({"enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}))
