"""One log format for every process: time, level, service, logger, message."""

from __future__ import annotations

import logging
import os


def configure_logging(service: str) -> None:
    level = os.environ.get("MEDSYNTH_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLevelName(level)))
