"""Exit 0 when every ``name==version`` pin of a requirements file (and its ``-r`` includes) is
installed in this interpreter's environment at exactly that version; 1 otherwise."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from collections.abc import Iterator
from pathlib import Path


def pins(path: Path) -> Iterator[str]:
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r"):
            yield from pins(path.parent / line[2:].strip())
        elif line:
            yield line


def installed(pin: str) -> bool:
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==(\S+)", pin)
    if m is None:
        return False  # not a plain pin: let pip decide
    try:
        return importlib.metadata.version(m[1]) == m[3]
    except importlib.metadata.PackageNotFoundError:
        return False


if __name__ == "__main__":
    missing = [p for p in pins(Path(sys.argv[1])) if not installed(p)]
    for pin in missing:
        print(f"not installed: {pin}", file=sys.stderr)
    sys.exit(1 if missing else 0)
