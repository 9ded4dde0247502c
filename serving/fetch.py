"""``python -m serving.fetch URI NAME VERSION TARGET``: download one model version into the service's cache.

A child process of the service (see serving/registry.py), so that MLflow is imported here and not there.
"""

from __future__ import annotations

import sys
from pathlib import Path

from serving.registry import download


def main(argv: list[str]) -> None:
    if len(argv) != 4:
        sys.exit("usage: python -m serving.fetch TRACKING_URI NAME VERSION TARGET")
    uri, name, version, target = argv
    download(uri, name, version, Path(target))


if __name__ == "__main__":
    main(sys.argv[1:])
