"""The model's contract: shapes, causality within a band, padding, and exact cached decoding."""

from __future__ import annotations

import pytest
import torch

from dtcond.model import DecisionTransformer, DTConfig


def make(discrete: bool, K: int = 5, n_layer: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    cfg = DTConfig(obs_dim=3, act_dim=4 if discrete else 2, discrete=discrete, context_len=K, n_layer=n_layer,
                   n_head=2, n_embd=32, dropout=0.1, max_timestep=200, return_scale=50.0,
                   action_low=None if discrete else [-2.0, 0.0], action_high=None if discrete else [2.0, 1.0])
    return DecisionTransformer(cfg).eval()


def episode(model, B=3, T=23, seed=1):
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    acts = torch.randint(cfg.act_dim, (B, T), generator=g) if cfg.discrete else torch.rand(B, T, cfg.act_dim, generator=g)
    return (torch.randn(B, T, generator=g) * 50, torch.randn(B, T, 3, generator=g), acts, torch.arange(T).repeat(B, 1))


@pytest.mark.parametrize("discrete", [True, False])
def test_shapes_and_action_bounds(discrete):
    model = make(discrete)
    out = model(*episode(model))
    assert out.shape == (3, 23, 4 if discrete else 2)
    if not discrete:
        assert (out[..., 0].abs() <= 2).all() and ((out[..., 1] >= 0) & (out[..., 1] <= 1)).all()


@pytest.mark.parametrize("discrete", [True, False])
def test_a_later_token_never_changes_an_earlier_prediction(discrete):
    model = make(discrete)
    rtg, obs, act, ts = episode(model)
    base = model(rtg, obs, act, ts)
    t = 11
    rtg2, obs2, act2 = rtg.clone(), obs.clone(), act.clone()
    rtg2[:, t + 1:] += 100.0
    obs2[:, t + 1:] += 1.0
    act2[:, t:] = (act2[:, t:] + 1) % 4 if discrete else act2[:, t:] * -1  # a_t comes after s_t
    changed = model(rtg2, obs2, act2, ts)
    torch.testing.assert_close(changed[:, : t + 1], base[:, : t + 1], rtol=0, atol=0)
    assert not torch.allclose(changed[:, t + 1:], base[:, t + 1:])


def test_the_band_bounds_how_far_back_information_reaches():
    # Each layer looks back K-1 steps, so step 0 can reach at most n_layer*(K-1) steps ahead.
    K, n_layer = 4, 2
    model = make(True, K=K, n_layer=n_layer)
    rtg, obs, act, ts = episode(model, T=15)
    obs2 = obs.clone()
    obs2[:, 0] += 5.0
    diff = (model(rtg, obs2, act, ts) - model(rtg, obs, act, ts)).abs().amax(dim=(0, 2))
    reach = n_layer * (K - 1)
    assert (diff[: reach + 1] > 0).all() and (diff[reach + 1:] == 0).all()


def test_left_padding_is_invisible():
    model = make(False)
    rtg, obs, act, ts = episode(model, T=6)
    pad = 4
    padded = [torch.cat([torch.zeros_like(x[:, :pad]), x], dim=1) for x in (rtg, obs, act, ts)]
    mask = torch.ones(3, 6 + pad, dtype=torch.bool)
    mask[:, :pad] = False
    out = model(*padded, mask=mask)
    torch.testing.assert_close(out[:, pad:], model(rtg, obs, act, ts), rtol=0, atol=1e-6)


@pytest.mark.parametrize("discrete", [True, False])
def test_cached_decoding_equals_the_full_forward(discrete):
    model = make(discrete, K=5, n_layer=3)
    T = 4 * 5 + 3  # several windows long
    rtg, obs, act, ts = episode(model, T=T)
    full = model(rtg, obs, act, ts)
    state = model.start(3)
    buffers = [k.data_ptr() for k in state.keys]
    steps = []
    for t in range(T):
        pred, state = model.step(state, rtg[:, t], obs[:, t], act[:, t - 1] if t else None)
        steps.append(pred)
        # The cache is a fixed ring buffer of the band's 3K tokens, written in place: nothing reallocated.
        assert [k.data_ptr() for k in state.keys] == buffers and state.keys[0].shape[2] == 3 * 5
    assert (torch.stack(steps, 1) - full).abs().max().item() <= 1e-5


def test_cache_rows_can_be_dropped_when_episodes_end():
    model = make(True)
    rtg, obs, act, ts = episode(model, B=4, T=9)
    full = model(rtg, obs, act, ts)
    state = model.start(4)
    rows = torch.arange(4)
    for t in range(9):
        if t == 5:  # episodes 1 and 3 ended: continue with 0 and 2 only
            rows = torch.tensor([0, 2])
            state = state.select(rows)
        pred, state = model.step(state, rtg[rows, t], obs[rows, t], act[rows, t - 1] if t else None)
    torch.testing.assert_close(pred, full[rows, -1], rtol=0, atol=1e-5)
