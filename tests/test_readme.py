"""The README's map of the code names every module there is, and nothing that is not."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "monitor"


def modules_in_the_table() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("### How the code is laid out", 1)[1].split("\n\n|", 1)[1]
    rows = [line for line in ("|" + table).splitlines() if line.startswith("| `")]
    named: set[str] = set()
    for row in rows:
        first = row.split("|")[1]
        named.update(re.findall(r"`([a-z_/]+)`", first))
        # `client/`'s and `simulator/`'s parts are listed in the second column
        if first.strip().endswith("/`"):
            package = first.strip().strip("`")
            named.update(package + part for part in re.findall(r"`([a-z_]+)`", row.split("|")[2]))
    return named


def modules_in_the_package() -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if path.name in ("__init__.py", "__main__.py"):
            if path.name == "__init__.py" and relative.parent != Path():
                found.add(f"{relative.parent.as_posix()}/")
            continue
        found.add(relative.with_suffix("").as_posix())
    return found


def test_the_module_table_matches_the_package() -> None:
    named = modules_in_the_table()
    assert modules_in_the_package() == named
