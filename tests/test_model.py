"""The model's contract: shapes, causality within a band, padding, and exact cached decoding."""

from __future__ import annotations

import pytest
import torch

from dtcond.common.errors import DtcondError
from dtcond.dt.model import DecisionTransformer, DecodeState, DTConfig

HEADS = ["discrete", "bins", "mse"]


def scaled_weights(model, scale: float):
    """``model`` with every weight matrix multiplied by ``scale``: trained-scale weights, where cache errors show."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(scale)
    return model


def make(head: str = "discrete", K: int = 5, n_layer: int = 3, seed: int = 0, scale: float = 1.0, activation: str = "gelu"):
    """A model with ``head``; ``scale`` multiplies every weight matrix, to reach trained-scale weights."""
    torch.manual_seed(seed)
    discrete = head == "discrete"
    cfg = DTConfig(obs_dim=3, act_dim=4 if discrete else 2, discrete=discrete, context_len=K, n_layer=n_layer,
                   n_head=2, n_embd=32, dropout=0.1, max_timestep=200, return_scale=50.0,
                   action_low=None if discrete else [-2.0, 0.0], action_high=None if discrete else [2.0, 1.0],
                   action_head="mse" if head == "mse" else "bins", action_bins=16, activation=activation)
    return scaled_weights(DecisionTransformer(cfg).eval(), scale)


def episode(model, B=3, T=23, seed=1):
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    acts = torch.randint(cfg.act_dim, (B, T), generator=g) if cfg.discrete else torch.rand(B, T, cfg.act_dim, generator=g)
    return (torch.randn(B, T, generator=g) * 50, torch.randn(B, T, 3, generator=g), acts, torch.arange(T).repeat(B, 1))


def expected_shape(model, B, T):
    cfg = model.cfg
    if cfg.discrete:
        return (B, T, cfg.act_dim)
    return (B, T, cfg.act_dim, cfg.action_bins) if cfg.binned else (B, T, cfg.act_dim)


@pytest.mark.parametrize("head", HEADS)
def test_shapes_and_action_bounds(head):
    model = make(head)
    out = model(*episode(model))
    assert out.shape == expected_shape(model, 3, 23)
    if head == "mse":
        assert (out[..., 0].abs() <= 2).all() and ((out[..., 1] >= 0) & (out[..., 1] <= 1)).all()


@pytest.mark.parametrize("head", HEADS)
def test_a_later_token_never_changes_an_earlier_prediction(head):
    model = make(head)
    discrete = head == "discrete"
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
    model = make("discrete", K=K, n_layer=n_layer)
    rtg, obs, act, ts = episode(model, T=15)
    obs2 = obs.clone()
    obs2[:, 0] += 5.0
    diff = (model(rtg, obs2, act, ts) - model(rtg, obs, act, ts)).abs().amax(dim=(0, 2))
    reach = n_layer * (K - 1)
    assert (diff[: reach + 1] > 0).all() and (diff[reach + 1:] == 0).all()


@pytest.mark.parametrize("head", ["bins", "mse"])
def test_left_padding_is_invisible(head):
    model = make(head)
    rtg, obs, act, ts = episode(model, T=6)
    pad = 4
    padded = [torch.cat([torch.zeros_like(x[:, :pad]), x], dim=1) for x in (rtg, obs, act, ts)]
    mask = torch.ones(3, 6 + pad, dtype=torch.bool)
    mask[:, :pad] = False
    out = model(*padded, mask=mask)
    torch.testing.assert_close(out[:, pad:], model(rtg, obs, act, ts), rtol=0, atol=1e-6)


def decode(model, rtg, obs, act, state=None):
    """Step through the whole episode with the cache; predictions stacked as the full forward's."""
    state = state or model.start(rtg.shape[0])
    buffers = [k.data_ptr() for k in state.keys]
    steps = []
    for t in range(rtg.shape[1]):
        pred, state = model.step(state, rtg[:, t], obs[:, t], act[:, t - 1] if t else None)
        steps.append(pred)
    # The cache is a fixed ring buffer, written in place: nothing reallocated per step.
    assert [k.data_ptr() for k in state.keys] == buffers
    return torch.stack(steps, 1)


def relative_error(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("n_layer", [1, 2, 3, 4])
@pytest.mark.parametrize("K", [1, 3, 5])
def test_cached_decoding_equals_the_full_forward_at_trained_scale(head, n_layer, K):
    # Weights ×8 (std 0.16, the scale of trained weights): the default init's std 0.02 would hide a
    # wrong cache behind errors of 1e-6.
    model = make(head, K=K, n_layer=n_layer, scale=8.0)
    T = 4 * K + 3  # several windows long
    rtg, obs, act, ts = episode(model, T=T)
    full = model(rtg, obs, act, ts)
    assert model.start(1).keys[0].shape[2] == 3 * K + 2
    assert relative_error(decode(model, rtg, obs, act), full) <= 1e-4


def test_the_paper_activation_decodes_exactly_and_is_not_gelu():
    # conf/model/paper.yaml takes the DT paper's ReLU; the same weights under GELU must give other outputs,
    # or the option would be a no-op.
    relu, gelu = make("bins", K=4, n_layer=3, scale=8.0, activation="relu"), make("bins", K=4, n_layer=3, scale=8.0)
    rtg, obs, act, ts = episode(relu, T=19)
    full = relu(rtg, obs, act, ts)
    assert relative_error(decode(relu, rtg, obs, act), full) <= 1e-4
    assert relative_error(gelu(rtg, obs, act, ts), full) > 1e-2
    with pytest.raises(Exception, match="activation must be one of"):
        DTConfig(obs_dim=3, act_dim=2, activation="swish")


def test_cached_decoding_equals_the_full_forward_after_training():
    # A briefly trained model: the weights have moved where the data put them, not where init did.
    model = make("bins", K=4, n_layer=3, seed=3)
    rtg, obs, act, ts = episode(model, B=16, T=30, seed=4)
    target = (obs[..., :2].tanh() * 0.5 + 0.5).clamp(0, 1) * torch.tensor([4.0, 1.0]) - torch.tensor([2.0, 0.0])
    from dtcond.rollout.distributions import bin_index

    bins = bin_index(target, torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0]), model.cfg.action_bins)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(rtg, obs, target, ts).flatten(0, 2), bins.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert loss.item() < 2.0  # it learned something (uniform over 16 bins is 2.77)
    full = model(rtg, obs, target, ts)
    assert relative_error(decode(model, rtg, obs, target), full) <= 1e-4


def test_a_ring_of_only_3K_slots_is_not_exact():
    # The bug the exactness tests are there to catch: a_{t-1} attends back to R̂_{t-K} and s_{t-K},
    # which a 3K-slot ring overwrites when R̂_t and s_t are written. It shows from t = K on.
    model = make("discrete", K=5, n_layer=3, scale=8.0)
    rtg, obs, act, ts = episode(model, T=20)
    full = model(rtg, obs, act, ts)
    good = model.start(3)
    S = 3 * 5
    short = DecodeState([k[:, :, :S].clone() for k in good.keys], [v[:, :, :S].clone() for v in good.values],
                        good.slot_steps[:S].clone(), good.slot_order[:S].clone())
    wrong = decode(model, rtg, obs, act, short)
    assert relative_error(wrong[:, :5], full[:, :5]) <= 1e-4  # exact before the ring wraps
    assert relative_error(wrong[:, 5:], full[:, 5:]) > 1e-2


def test_cache_rows_can_be_dropped_when_episodes_end():
    model = make("discrete", scale=8.0)
    rtg, obs, act, ts = episode(model, B=4, T=9)
    full = model(rtg, obs, act, ts)
    state = model.start(4)
    rows = torch.arange(4)
    for t in range(9):
        if t == 5:  # episodes 1 and 3 ended: continue with 0 and 2 only
            rows = torch.tensor([0, 2])
            state = state.select(rows)
        pred, state = model.step(state, rtg[rows, t], obs[rows, t], act[rows, t - 1] if t else None)
    assert relative_error(pred, full[rows, -1]) <= 1e-4


def make_cost(K: int = 4, n_layer: int = 3, scale: float = 8.0, seed: int = 0):
    """A cost-conditioned model (Ĉ_t embedded into the return token), weights at trained scale."""
    torch.manual_seed(seed)
    cfg = DTConfig(obs_dim=3, act_dim=4, discrete=True, context_len=K, n_layer=n_layer, n_head=2, n_embd=32,
                   max_timestep=200, return_scale=50.0, cost_conditioned=True, cost_scale=20.0)
    return scaled_weights(DecisionTransformer(cfg).eval(), scale)


@pytest.mark.parametrize("n_layer, K", [(1, 1), (3, 3), (4, 5)])
def test_cost_conditioned_cached_decoding_equals_the_full_forward(n_layer, K):
    model = make_cost(K=K, n_layer=n_layer)
    rtg, obs, act, ts = episode(model, T=4 * K + 3)
    ctg = torch.rand(rtg.shape, generator=torch.Generator().manual_seed(7)) * 40  # (B, T)
    full = model(rtg, obs, act, ts, costs_to_go=ctg)
    state, steps = model.start(rtg.shape[0]), []
    for t in range(rtg.shape[1]):
        pred, state = model.step(state, rtg[:, t], obs[:, t], act[:, t - 1] if t else None, costs_to_go=ctg[:, t])
        steps.append(pred)
    assert relative_error(torch.stack(steps, 1), full) <= 1e-4
    # The cost-to-go reaches the prediction: another budget, other actions.
    assert relative_error(model(rtg, obs, act, ts, costs_to_go=ctg + 20), full) > 1e-2


def test_a_cost_conditioned_model_needs_costs_and_a_plain_one_has_no_cost_weights():
    model = make_cost()
    rtg, obs, act, ts = episode(model, T=6)
    with pytest.raises(Exception, match="pass costs_to_go"):
        model(rtg, obs, act, ts)
    plain = make("discrete")
    assert "embed_cost.weight" in model.state_dict() and not any("cost" in k for k in plain.state_dict())
    # A config written before cost conditioning existed (no such keys) builds the return-only model.
    old = {k: v for k, v in plain.cfg.to_dict().items() if k not in ("cost_conditioned", "cost_scale")}
    assert DTConfig.from_dict(old).cost_conditioned is False


def test_dropout_drops_a_fraction_p_and_rescales_the_rest_as_nn_dropout_does():
    from dtcond.dt.model import Dropout

    torch.manual_seed(0)
    x = (torch.rand(1000, 1000) + 1.0).requires_grad_()  # no zeros of its own
    drop = Dropout(0.1).train()
    y = drop(x)
    dropped = y == 0
    assert abs(dropped.float().mean().item() - 0.1) < 0.002  # 1M draws: 5 standard errors is 0.0015
    torch.testing.assert_close(y[~dropped], x[~dropped] / 0.9)
    y.sum().backward()  # the gradient goes through the kept elements only, scaled alike
    torch.testing.assert_close(x.grad, (~dropped).float() / 0.9)
    assert drop.eval()(x) is x and Dropout(0.0).train()(x) is x
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 inputs: the rate is still p (bf16 uniforms give 0.1015)
        rates = [(drop.train()(torch.ones(1000, 1000, dtype=torch.bfloat16)) == 0).float().mean().item() for _ in range(4)]
    assert abs(sum(rates) / 4 - 0.1) < 0.001  # 4M draws: 0.001 is 6.7 standard errors; 0.1015 is 10
    with pytest.raises(DtcondError, match=r"dropout must be in \[0, 1\)"):
        Dropout(1.0)


def test_attention_keeps_the_fused_qkv_layout_that_saved_weights_have():
    """q, k, v are the thirds of the fused projection, each split into heads: the layout bundles were written with."""
    from einops import rearrange

    from dtcond.dt.model import CausalSelfAttention

    torch.manual_seed(0)
    cfg = DTConfig(obs_dim=3, act_dim=2, n_head=4, n_embd=32, dropout=0.0)
    attn = scaled_weights(CausalSelfAttention(cfg).eval(), 8.0)
    x = torch.randn(2, 9, 32)
    mask = torch.tril(torch.ones(9, 9, dtype=torch.bool))
    q, k, v = rearrange(attn.qkv(x), "b t (three h d) -> three b h t d", three=3, h=4)
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(attn(x, mask), attn.proj(rearrange(y, "b h t d -> b t (h d)")))


@pytest.mark.parametrize("n_head", [1, 2])
def test_a_layer_restricted_to_some_queries_outputs_what_the_full_layer_does_there(n_head):
    """The last layer computes queries at state tokens only: its q/k/v weight split must match the fused one."""
    from dtcond.dt.model import STATE_TOKENS, Block

    torch.manual_seed(0)
    cfg = DTConfig(obs_dim=3, act_dim=2, n_head=n_head, n_embd=32, dropout=0.0)
    block = scaled_weights(Block(cfg).eval(), 8.0)
    x = torch.randn(4, 3 * 7, 32)
    mask = torch.tril(torch.ones(21, 21, dtype=torch.bool))[None, None]
    torch.testing.assert_close(block(x, mask, select=STATE_TOKENS), block(x, mask)[:, STATE_TOKENS])
