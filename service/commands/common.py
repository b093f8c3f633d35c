"""What the commands share: the service's settings, read once, with logging set up from them."""

import sys

from service.logs import configure_logging
from service.settings import Config, ConfigError


def configured() -> Config:
    """``Config`` from the environment with JSON logging at its level; exit 1 (after a message on
    standard error that names the variable) when a setting is bad."""
    try:
        config = Config.from_env()
    except ConfigError as exc:
        sys.stderr.write(f"configuration error: {exc}\n")
        raise SystemExit(1) from None
    configure_logging(config.logging_level)
    return config
