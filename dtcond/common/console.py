"""What a long run prints: library chatter kept out of dtcond's own progress lines."""

from __future__ import annotations

import logging
import warnings


def quiet_libraries() -> None:
    """Keep Lightning's device banners and tips and Minari's metadata nudges out of the progress lines."""
    import lightning.pytorch  # noqa: F401  (its import sets its loggers to INFO; quiet them after)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", module="minari")


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg).lower()


def drop_adverts() -> None:
    """Drop Lightning's "Tip: ... litlogger" line, which every Trainer prints, and torch's ``LeafSpec``
    deprecation, which Lightning's own pytree code triggers: neither is about the user's run."""
    for name in ("lightning.fabric.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero", "lightning_utilities.core.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAdverts) for f in logger.filters):
            logger.addFilter(_DropAdverts())
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
