"""The data-generating process: behaviour policies and mixtures of them (``mixture``), collecting a Minari dataset
from a mixture (``collection``), and the data's exact likelihood from the mixture it recorded (``likelihood``).

Layer 7: may import common, envs, datasets, targets, config, rollout (the layers below it; the package docstring
lists them).
"""
