"""Entrypoint: ``python server.py`` is ``pytrickle-worker serve``."""

import sys

from pytrickle_worker.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
