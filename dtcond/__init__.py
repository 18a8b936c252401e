"""dtcond: condition decision transformers on any target return.

Importing dtcond has no side effects and stays light: heavy modules (torch, lightning, minari)
load when first used.
"""

from dtcond.errors import DtcondError

__version__ = "0.1.0"

__all__ = ["DtcondError", "__version__", "collect", "load_dataset"]


def __getattr__(name):
    # Lazy so that `import dtcond` does not pay for torch/minari until they are needed.
    if name == "collect":
        from dtcond.collect import collect

        return collect
    if name == "load_dataset":
        from dtcond.data import load

        return load
    raise AttributeError(f"module 'dtcond' has no attribute {name!r}")
