"""The Decision Transformer: the model with its cached decoder (``model``), the Lightning data module and training
(``datamodule``, ``training``), expected-return relabelling (``relabel``), the return-conditioned policy
(``policy``) and its self-describing bundles (``checkpoints``). BC and %BC are this model with returns switched off.

Layer 8: may import common, envs, datasets, targets, config, rollout, behavior (the layers below it; the package
docstring lists them).
"""
