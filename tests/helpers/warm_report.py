"""`python -m helpers.warm_report`: what the warm-ups of helpers.warm_marks did in this process
("cold": none ran)."""

import sys

marks = sys.modules.get("helpers.warm_marks")
print(",".join(marks.WARMED) if marks is not None else "cold")
