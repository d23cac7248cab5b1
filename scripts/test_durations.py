"""Write tests/durations.json, each test file's seconds in a run of the suite, from that run's
JUnit XML: the order in which the suite hands files to its processes (tests/conftest.py: the
longest first, so that no long file starts last and runs alone at the end).

    .venv/bin/pytest --junitxml=/tmp/suite.xml && .venv/bin/python scripts/test_durations.py /tmp/suite.xml
"""

from __future__ import annotations

import argparse
import collections
import json
import xml.etree.ElementTree as ET
from pathlib import Path

DURATIONS = Path(__file__).resolve().parent.parent / "tests" / "durations.json"


def file_seconds(junit: Path) -> dict[str, float]:
    """tests/test_x.py -> the seconds of its tests (setup and teardown included, as JUnit counts)."""
    seconds: collections.Counter[str] = collections.Counter()
    for case in ET.parse(junit).iter("testcase"):
        module = case.get("classname", "").split(".")
        if len(module) >= 2 and module[0] == "tests":
            seconds[f"tests/{module[1]}.py"] += float(case.get("time", 0))
    return {name: round(value, 1) for name, value in sorted(seconds.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("junit", type=Path, help="the JUnit XML of a whole run of the suite")
    args = parser.parse_args()
    DURATIONS.write_text(json.dumps(file_seconds(args.junit), indent=1) + "\n")
    print(f"wrote {DURATIONS}")


if __name__ == "__main__":
    main()
