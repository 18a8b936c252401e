"""Online RL with Stable-Baselines3: training plain and regularized PPO/SAC (``baselines``), the regularizers as
rollout penalties (``penalties``), the data's behaviour model β̂ they regularize toward (``behavior_model``), and SB3
policies' code-free bundles behind the policy contract (``sb3_policy``); and RL fine-tuning of the BC transformer itself
with a KL penalty toward its frozen copy (``finetune``).

Layer 9: may import common, envs, datasets, targets, config, rollout, behavior, dt (the layers below it; the
package docstring lists them).
"""
