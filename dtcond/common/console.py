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
