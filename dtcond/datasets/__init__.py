"""Offline data: where local Minari datasets live and their id rules (``storage``), the checks every dataset passes
as it is read (``validation``), one observation codec for every space (``observations``), loading a dataset into
trajectories and its :class:`~dtcond.datasets.loading.DatasetStats` (``loading``), K-step training windows and the
split by episode (``windows``), and the environment a dataset was recorded in (``recorded``).

Layer 3: may import common, envs (the layers below it; the package docstring lists them).
"""
