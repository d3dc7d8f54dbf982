"""``python -m pytrickle_worker.devtools OUT_DIR [--force]``: build the demo assets."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pytrickle_worker.core.errors import WorkerError
from pytrickle_worker.core.logutil import setup_logging
from pytrickle_worker.devtools.assets import build_demo_assets

logger = logging.getLogger("pytrickle_worker.devtools")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytrickle_worker.devtools",
        description="Generate the demo models, demo.mpta and sample.mp4.",
    )
    parser.add_argument("out_dir", type=Path, help="folder to write the assets into")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    args = parser.parse_args(argv)
    setup_logging(str(args.log_level))
    try:
        assets = build_demo_assets(Path(args.out_dir), force=bool(args.force))
    except WorkerError as exc:
        logger.error("%s", exc)
        return 1
    logger.info("detector:     %s", assets.detector_path)
    logger.info("classifier:   %s", assets.classifier_path)
    logger.info("demo MPTA:    %s", assets.mpta_path)
    logger.info("sample video: %s", assets.video_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
