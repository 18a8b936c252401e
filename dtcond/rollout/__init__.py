"""Rolling policies out: the one policy contract every family implements (``contract``), the binned action
distribution it reports for Box actions (``distributions``), batched seeded evaluation into one record per episode
(``evaluation``) and the results table those records are appended to (``records``).

Layer 6: may import common, envs, datasets, targets, config (the layers below it; the package docstring lists
them).
"""
