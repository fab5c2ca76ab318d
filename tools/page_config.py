"""Print a Jupyter Book config that executes only one chapter (and the errata), for `make page`.

Usage: python tools/page_config.py book/<chapter>.md > config.yml
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def page_config(page: str) -> dict[str, object]:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    keep = {page, "book/errata.md"}
    chapters = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "book").glob("*.md"))
    config["execute"]["exclude_patterns"] = [p for p in chapters if p not in keep]
    config["execute"]["execute_notebooks"] = "force"  # never a stale cached result while writing
    sphinx = config["sphinx"]
    # the config file is read from another folder: make local extension paths absolute
    sphinx["local_extensions"] = {
        name: str(ROOT / path) for name, path in sphinx.get("local_extensions", {}).items()
    }
    # figures (and glue) of unexecuted chapters do not exist: references to them are not errors here
    sphinx["config"]["suppress_warnings"] = ["mystnb.glue", "mystnb.glue_ref", "ref.numref"]
    return config


if __name__ == "__main__":
    if len(sys.argv) != 2 or not (ROOT / sys.argv[1]).is_file():
        sys.exit("usage: python tools/page_config.py book/<chapter>.md")
    yaml.safe_dump(page_config(sys.argv[1]), sys.stdout, sort_keys=False)
