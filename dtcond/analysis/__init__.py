"""Reading results: the one set of statistics (``statistics``), how far episodes roam from the data
(``roaming``), oracle references drawn from the behaviour mixture (``oracles``), return-against-divergence frontiers
and budget comparisons (``frontier``), and reports (``report``).

Layer 11: may import common, envs, datasets, targets, config, rollout, behavior, dt, rl, families (the layers below
it; the package docstring lists them).
"""
