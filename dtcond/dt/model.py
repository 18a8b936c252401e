"""The Decision Transformer, written plainly.

Each timestep t contributes three tokens, (R̂_t, s_t, a_t), each embedded and summed with a learned
embedding of the episode timestep t; the action a_t is predicted from the hidden state at s_t.

Attention is causal and *banded*: a token at timestep t sees tokens of timesteps t-K+1 .. t only
(K = ``context_len``). With no position embeddings besides the timestep, a token's keys and values
then never depend on how far back a sequence starts, so decoding an episode step by step with a
rolling key/value cache of the last 3K+2 tokens reproduces a full forward over the whole episode
exactly (see ``DecisionTransformer.step``). Training uses segments longer than K so the model learns
under the same pattern it is decoded with; with ``segment == K`` it is the plain windowed DT.

Cost conditioning (``cost_conditioned=True``, after OSRL's Constrained DT): the return token embeds
the pair (R̂_t, Ĉ_t), return-to-go and cost-to-go, as the sum of two linear embeddings. CDT gives Ĉ_t a
token of its own (4 per step); one joint token keeps 3 per step, so the band, the ring buffer and the
cached decoder's exactness are unchanged, and a model without it has the same weights as before.

Action heads: Discrete actions get logits. Box actions get, by default (``action_head="bins"``), a
distribution per action dimension over ``action_bins`` equal-width bins of [low, high], uniform
within a bin: a piecewise-uniform density that can be noisy or multimodal, trained by
log-likelihood and sampled at evaluation, with exact log-probs and entropy. ``action_head="mse"``
is the original DT's deterministic tanh-squashed mean, trained by squared error.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from dtcond.config import ModelConfig
from dtcond.common.errors import DtcondError

TOKENS_PER_STEP = 3  # return-to-go, state, action
ACTION_HEADS = ("bins", "mse")
ACTIVATIONS = ("gelu", "relu")
ENCODERS = ("mlp", "cnn")
STATE_TOKENS = slice(1, None, TOKENS_PER_STEP)  # positions of s_t in the interleaved sequence
LAST = slice(-1, None)

_MODEL = ModelConfig()  # the architecture's defaults are written once, in dtcond.config; DTConfig adds the dataset's sizes


@dataclass
class DTConfig:
    obs_dim: int
    act_dim: int  # vector size (continuous) or number of actions (discrete)
    discrete: bool = False
    context_len: int = _MODEL.context_len  # K: timesteps a token attends back over (the paper's context)
    n_layer: int = _MODEL.n_layer
    n_head: int = _MODEL.n_head
    n_embd: int = _MODEL.n_embd
    dropout: float = _MODEL.dropout
    activation: str = _MODEL.activation  # the MLP's nonlinearity: "gelu" (GPT-2's) or "relu" (the DT paper's gym code, and HF's default)
    max_timestep: int = 1000  # timestep embedding table size; later timesteps share the last row
    return_scale: float = 1000.0  # returns-to-go are divided by this before embedding
    action_low: list[float] | None = None  # continuous: actions are squashed into [low, high]
    action_high: list[float] | None = None
    action_head: str = _MODEL.action_head  # continuous: "bins" (a sampled distribution) or "mse" (a deterministic mean)
    action_bins: int = _MODEL.action_bins  # continuous "bins" head: equal-width bins per action dimension
    cost_conditioned: bool = _MODEL.cost_conditioned  # also condition on cost-to-go Ĉ_t, embedded into the return token
    cost_scale: float = 1.0  # costs-to-go are divided by this before embedding
    encoder: str = "mlp"  # the state embedding: "mlp" (a linear layer) or "cnn" (the DT paper's Atari convs, for uint8 frames)
    obs_shape: list[int] | None = None  # (C, H, W) of uint8 frames, scaled to [0, 1] inside the model; None: float vectors
    frame_stack: int = _MODEL.frame_stack  # frames per state: each state is its frame and the k-1 before it, stacked on channels (k*C, H, W)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.obs_dim < 1 or self.act_dim < 1:
            raise DtcondError(f"obs_dim and act_dim must be >= 1, got {self.obs_dim}, {self.act_dim}")
        if self.context_len < 1:
            raise DtcondError(f"context_len must be >= 1, got {self.context_len}")
        if self.n_embd % self.n_head:
            raise DtcondError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise DtcondError(f"dropout must be in [0, 1), got {self.dropout}")
        if not (self.return_scale > 0 and math.isfinite(self.return_scale)):
            raise DtcondError(f"return_scale must be a positive number, got {self.return_scale}")
        if not (self.cost_scale > 0 and math.isfinite(self.cost_scale)):
            raise DtcondError(f"cost_scale must be a positive number, got {self.cost_scale}")
        if self.activation not in ACTIVATIONS:
            raise DtcondError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.action_head not in ACTION_HEADS:
            raise DtcondError(f"action_head must be one of {ACTION_HEADS}, got {self.action_head!r}")
        if self.encoder not in ENCODERS:
            raise DtcondError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.obs_shape is not None and (len(self.obs_shape) != 3 or math.prod(self.obs_shape) != self.obs_dim):
            raise DtcondError(f"obs_shape must be (C, H, W) with C*H*W == obs_dim ({self.obs_dim}), got {self.obs_shape}")
        if self.frame_stack < 1 or (self.frame_stack > 1 and self.obs_shape is None):
            raise DtcondError(f"frame_stack must be >= 1, and > 1 only for image observations, got {self.frame_stack}")
        if self.encoder == "cnn" and self.obs_shape is None:
            raise DtcondError("encoder 'cnn' needs image observations (uint8 frames, obs_shape (C, H, W)); use encoder 'mlp'")
        if self.action_bins < 2:
            raise DtcondError(f"action_bins must be >= 2, got {self.action_bins}")
        if not self.discrete:
            if self.action_low is None or self.action_high is None:
                self.action_low, self.action_high = [-1.0] * self.act_dim, [1.0] * self.act_dim
            if len(self.action_low) != self.act_dim or len(self.action_high) != self.act_dim:
                raise DtcondError("action_low/action_high must have act_dim entries")
            if any(not (h > l) for l, h in zip(self.action_low, self.action_high)):
                raise DtcondError(f"action_high must exceed action_low in every dimension, got {self.action_low} / {self.action_high}")

    @property
    def binned(self) -> bool:
        """True when the policy outputs a distribution over bins per (continuous) action dimension."""
        return not self.discrete and self.action_head == "bins"

    @property
    def head_dim(self) -> int:
        return self.act_dim * self.action_bins if self.binned else self.act_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DTConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise DtcondError(f"model config has unknown keys {sorted(unknown)}")
        return cls(**d)


def band_mask(steps_q: torch.Tensor, steps_k: torch.Tensor, context_len: int) -> torch.Tensor:
    """True where a query may attend a key: key not later, and fewer than K timesteps back.

    ``steps_*`` are per-token step indices (B, Tq) / (B, Tk) counted within the sequence, with the
    token order breaking ties (a key at the same step but later in the order is masked by the caller).
    """
    diff = steps_q[..., :, None] - steps_k[..., None, :]  # (B, Tq, Tk)
    return (diff >= 0) & (diff < context_len)


class Dropout(nn.Module):
    """``nn.Dropout``, with its CPU mask drawn by ``rand_like`` rather than ``bernoulli_``.

    Same distribution and scaling; the uniforms are fp32 even under bf16 autocast, where bf16 ones
    would drop 10.15% at p=0.1. On CPU torch's ``bernoulli_`` is about 2x slower than ``rand`` (24 vs
    12 ms for 3.5M elements, torch 2.13, one core), and the paper model's ten dropouts were ~10% of a
    training step. Elsewhere ``F.dropout``: CUDA's is one fused kernel, and small GPU steps are
    launch-bound.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise DtcondError(f"dropout must be in [0, 1), got {p}")
        self.p = p

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        scale = torch.rand_like(x, dtype=torch.float32).ge_(self.p).div_(1.0 - self.p)  # 0 or 1/(1-p), as nn.Dropout's
        return x * scale.to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: DTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout
        self.resid_drop = Dropout(cfg.dropout)

    def forward(self, x, mask, cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None, select: slice | None = None):
        # x: (B, T, C); mask: (B or 1, 1, T, T) bool, or (T, S) with a cache
        # cache: (keys, values, slots): ring buffers (B, nh, S, hd) that this call's keys and values
        # are written into at ``slots`` (T,), in place, before attending over the whole buffer.
        # select: every token's keys and values, but outputs for the queries x[:, select] only.
        if select is None:
            q, k, v = self.qkv(x).chunk(3, dim=-1)  # (B, T, C) each
        else:  # queries for the selected tokens only; keys and values for all
            C, w, b = x.shape[-1], self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, select], w[:C], b[:C])  # (B, T_sel, C)
            k, v = F.linear(x, w[C:], b[C:]).chunk(2, dim=-1)  # (B, T, C) each
            mask = mask[..., select, :]
        # chunk, then a view each (not one rearrange of the fused output): backward then concatenates
        # contiguous grads instead of copying a permuted stack, ~2% of a CPU training step
        q, k, v = (rearrange(z, "b t (h d) -> b h t d", h=self.n_head) for z in (q, k, v))  # (B, nh, T, hd)
        if cache is not None:
            keys, values, slots = cache
            keys[:, :, slots] = k
            values[:, :, slots] = v
            k, v = keys, values  # (B, nh, S, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        y = rearrange(y, "b h t d -> b t (h d)")  # (B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: DTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.act = F.relu if cfg.activation == "relu" else F.gelu
        self.drop = Dropout(cfg.dropout)

    def forward(self, x):
        return self.drop(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: DTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x, mask, cache=None, select: slice | None = None):
        a = self.attn(self.ln_1(x), mask, cache, select)
        x = (x if select is None else x[:, select]) + a
        return x + self.mlp(self.ln_2(x))


class ConvEncoder(nn.Module):
    """The DT paper's Atari state encoder (Nature DQN): convs 32×8×8/4, 64×4×4/2, 64×3×3/1, then a linear layer and tanh.

    Takes uint8 frames (..., C, H, W) and scales them to [0, 1] here, so frames stay uint8 in memory
    and on the device until this point.

    >>> ConvEncoder((4, 84, 84), 128)(torch.zeros(2, 5, 4, 84, 84, dtype=torch.uint8)).shape
    torch.Size([2, 5, 128])
    """

    def __init__(self, shape, n_embd: int):
        super().__init__()
        C, H, W = shape
        self.convs = nn.Sequential(
            nn.Conv2d(C, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        h, w = H, W
        for k, st in ((8, 4), (4, 2), (3, 1)):
            h, w = (h - k) // st + 1, (w - k) // st + 1
        if h < 1 or w < 1:
            raise DtcondError(f"frames of {H}x{W} are too small for the conv encoder (it needs at least 36x36); "
                              "use model.encoder=mlp")
        self.proj = nn.Linear(64 * h * w, n_embd)

    def forward(self, frames):
        lead = frames.shape[:-3]
        x = frames.reshape(-1, *frames.shape[-3:]).float().div_(255.0)  # (N, C, H, W) in [0, 1]
        return torch.tanh(self.proj(self.convs(x))).reshape(*lead, -1)  # (..., n_embd)


@dataclass
class DecodeState:
    """Per-layer key/value ring buffers holding the last 3K+2 tokens, and which token sits in each slot.

    Attention is permutation-invariant over keys, so tokens need not be stored in order: a new token
    overwrites the oldest slot, and masks built from ``slot_steps``/``slot_order`` say which slots a
    query may see. Nothing is copied per step. ``step`` updates the buffers in place.
    """

    keys: list[torch.Tensor]  # per layer (B, nh, S, hd), S = 3K + 2
    values: list[torch.Tensor]
    slot_steps: torch.Tensor  # (S,) timestep of the token in each slot (far negative: empty)
    slot_order: torch.Tensor  # (S,) global index of the token in each slot (-1: empty)
    written: int = 0  # tokens written so far
    step: int = 0

    def select(self, rows: torch.Tensor) -> DecodeState:
        """Keep only the batch rows ``rows`` (episodes still running)."""
        return DecodeState([k[rows] for k in self.keys], [v[rows] for v in self.values], self.slot_steps,
                           self.slot_order, self.written, self.step)


class DecisionTransformer(nn.Module):
    def __init__(self, cfg: DTConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.n_embd
        self.embed_timestep = nn.Embedding(cfg.max_timestep, C)
        self.embed_return = nn.Linear(1, C)
        if cfg.cost_conditioned:  # only then: models without it keep their exact state dict
            self.embed_cost = nn.Linear(1, C)
        stacked = None if cfg.obs_shape is None else [cfg.frame_stack * cfg.obs_shape[0], *cfg.obs_shape[1:]]  # (k*C, H, W)
        self.embed_state = ConvEncoder(stacked, C) if cfg.encoder == "cnn" else nn.Linear(cfg.obs_dim * cfg.frame_stack, C)
        self.embed_action = nn.Embedding(cfg.act_dim, C) if cfg.discrete else nn.Linear(cfg.act_dim, C)
        self.embed_ln = nn.LayerNorm(C)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(C)
        self.action_head = nn.Linear(C, cfg.head_dim)
        if not cfg.discrete:
            low = torch.tensor(cfg.action_low, dtype=torch.float32)
            high = torch.tensor(cfg.action_high, dtype=torch.float32)
            # Not persistent: they are rebuilt from the config, so weights files hold weights only.
            self.register_buffer("action_mid", (high + low) / 2, persistent=False)
            self.register_buffer("action_half", (high - low) / 2, persistent=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def action_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(low, high) of Box actions, as tensors on the model's device."""
        return self.action_mid - self.action_half, self.action_mid + self.action_half

    # ------------------------------------------------------------------ embedding and heads

    def _embed_target(self, returns_to_go, costs_to_go):
        """The conditioning token's content (..., C): R̂_t, and with ``cost_conditioned`` Ĉ_t added in.

        One token for both signals (a linear embedding of the pair (R̂, Ĉ)) keeps three tokens per
        step, so the band, the ring buffer and the exactness of cached decoding are those of the
        return-only model.
        """
        r = self.embed_return(returns_to_go[..., None] / self.cfg.return_scale)
        if not self.cfg.cost_conditioned:
            return r
        if costs_to_go is None:
            raise DtcondError("this model is cost-conditioned: pass costs_to_go (the cost budget left) with the returns-to-go")
        return r + self.embed_cost(costs_to_go[..., None] / self.cfg.cost_scale)

    def _embed_obs(self, observations):
        """State embeddings (..., C) of float vectors (..., obs_dim), or of uint8 frames (..., C, H, W)."""
        if self.cfg.encoder == "cnn":
            return self.embed_state(observations)
        if self.cfg.obs_shape is not None:  # frames through the linear embedding: flattened and scaled here
            observations = observations.flatten(-3).float() / 255.0
        return self.embed_state(observations)

    def _embed(self, returns_to_go, observations, actions, timesteps, costs_to_go=None):
        """Interleaved tokens (B, 3T, C) for T timesteps; ``actions`` may be one step short."""
        t_emb = self.embed_timestep(timesteps.clamp(max=self.cfg.max_timestep - 1))  # (B, T, C)
        r = self._embed_target(returns_to_go, costs_to_go) + t_emb  # (B, T, C)
        s = self._embed_obs(observations) + t_emb  # (B, T, C)
        a = self.embed_action(actions) + t_emb[:, : actions.shape[1]]  # (B, T or T-1, C)
        if a.shape[1] < s.shape[1]:  # the last action is not known yet: pad, the caller drops its token
            a = F.pad(a, (0, 0, 0, s.shape[1] - a.shape[1]))
        x = rearrange(torch.stack([r, s, a], dim=2), "b t k c -> b (t k) c")  # (B, 3T, C)
        return self.drop(self.embed_ln(x))

    def _head(self, h):
        """Hidden states at state tokens → logits (discrete), bin logits (B, T, act_dim, bins), or squashed actions."""
        out = self.action_head(self.ln_f(h))  # (B, T, head_dim)
        if self.cfg.discrete:
            return out
        if self.cfg.binned:
            return rearrange(out, "... (d n) -> ... d n", d=self.cfg.act_dim)  # (B, T, act_dim, bins)
        return self.action_mid + self.action_half * torch.tanh(out)

    # ------------------------------------------------------------------ full forward (training)

    def forward(self, returns_to_go, observations, actions, timesteps, mask=None, costs_to_go=None):
        """Action predictions at every timestep: logits (B, T, n), bin logits (B, T, act_dim, bins) or actions (B, T, act_dim).

        returns_to_go (B, T) raw, observations (B, T, obs_dim) normalized, actions (B, T) long or
        (B, T, act_dim), timesteps (B, T) long, mask (B, T) bool with False on left padding,
        costs_to_go (B, T) raw, for a ``cost_conditioned`` model only.
        """
        B, T = returns_to_go.shape
        x = self._embed(returns_to_go, observations, actions, timesteps, costs_to_go)  # (B, 3T, C)
        steps = torch.arange(T, device=x.device).repeat_interleave(TOKENS_PER_STEP)  # (3T,)
        order = torch.arange(3 * T, device=x.device)
        attn = band_mask(steps, steps, self.cfg.context_len) & (order[:, None] >= order[None, :])  # (3T, 3T)
        attn = attn[None].expand(B, -1, -1)  # (B, 3T, 3T)
        if mask is not None:
            key_ok = mask.repeat_interleave(TOKENS_PER_STEP, dim=1)  # (B, 3T)
            # Padding keys are hidden; every token still sees itself, so no row is empty.
            attn = (attn & key_ok[:, None, :]) | torch.eye(3 * T, dtype=torch.bool, device=x.device)
        attn = attn[:, None]  # (B, 1, 3T, 3T)
        for block in self.blocks[:-1]:
            x = block(x, attn)  # (B, 3T, C)
        # Actions are read at state tokens only, so the last layer computes outputs for those alone.
        h = self.blocks[-1](x, attn, select=STATE_TOKENS)  # (B, T, C)
        return self._head(h)

    # ------------------------------------------------------------------ incremental decoding (rollouts)

    def start(self, batch_size: int, device=None) -> DecodeState:
        """An empty cache for ``batch_size`` episodes that start together at timestep 0."""
        # A step writes a_{t-1}, R̂_t and s_t before attending, and a_{t-1} still attends back to
        # R̂_{t-K} and s_{t-K}: the band's 3K tokens plus the two new ones must all fit.
        nh, hd, S = self.cfg.n_head, self.cfg.n_embd // self.cfg.n_head, TOKENS_PER_STEP * self.cfg.context_len + 2
        dtype = self.embed_timestep.weight.dtype
        return DecodeState(
            [torch.zeros(batch_size, nh, S, hd, device=device, dtype=dtype) for _ in range(self.cfg.n_layer)],
            [torch.zeros(batch_size, nh, S, hd, device=device, dtype=dtype) for _ in range(self.cfg.n_layer)],
            torch.full((S,), -(2**40), dtype=torch.long, device=device),
            torch.full((S,), -1, dtype=torch.long, device=device),
        )

    @torch.no_grad()
    def step(self, state: DecodeState, returns_to_go, observations, prev_actions=None, timesteps=None, costs_to_go=None):
        """Feed (a_{t-1}, R̂_t, s_t) and return the prediction for a_t (as ``forward``'s, one step) and the new state.

        returns_to_go (B,), observations (B, obs_dim), prev_actions (B,) or (B, act_dim), None at t=0;
        timesteps (B,) long, default: the step count; costs_to_go (B,) for a ``cost_conditioned``
        model. Equals ``forward`` over the whole history.
        """
        t = state.step
        B = returns_to_go.shape[0]
        device = returns_to_go.device
        if timesteps is None:
            timesteps = torch.full((B,), t, dtype=torch.long, device=device)
        t_emb = self.embed_timestep(timesteps.clamp(max=self.cfg.max_timestep - 1))  # (B, C)
        tokens, token_steps = [], []
        if t > 0:
            # a_{t-1} belongs to step t-1, so it carries that step's timestep embedding.
            prev_t_emb = self.embed_timestep((timesteps - 1).clamp(min=0, max=self.cfg.max_timestep - 1))
            tokens.append(self.embed_action(prev_actions) + prev_t_emb)
            token_steps.append(t - 1)
        tokens.append(self._embed_target(returns_to_go, costs_to_go) + t_emb)
        tokens.append(self._embed_obs(observations) + t_emb)
        token_steps += [t, t]
        x = self.embed_ln(torch.stack(tokens, dim=1))  # (B, n_new, C)
        n_new, S = len(token_steps), state.slot_steps.shape[0]
        # The oldest slots make room. The oldest token still in use is R̂_{t-K}, seen by a_{t-1}; it is
        # 3K+1 tokens before s_t, so with S = 3K+2 slots no token in use is overwritten.
        order = torch.arange(state.written, state.written + n_new, device=device)  # (n_new,)
        slots = order % S
        slot_steps, slot_order = state.slot_steps.clone(), state.slot_order.clone()
        slot_steps[slots] = torch.tensor(token_steps, dtype=torch.long, device=device)
        slot_order[slots] = order
        attn = band_mask(slot_steps[slots], slot_steps, self.cfg.context_len)  # (n_new, S)
        attn = attn & (slot_order[None, :] >= 0) & (slot_order[None, :] <= order[:, None])
        for i, block in enumerate(self.blocks):
            # The last layer's keys and values are cached, but only s_t's output is needed from it.
            x = block(x, attn, (state.keys[i], state.values[i], slots), select=LAST if i == len(self.blocks) - 1 else None)
        prediction = self._head(x[:, -1])  # from s_t: (B, n), (B, act_dim, bins) or (B, act_dim)
        new_state = DecodeState(state.keys, state.values, slot_steps, slot_order, state.written + n_new, t + 1)
        return prediction, new_state


def configure_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999), fused: bool | None = None):
    """AdamW with weight decay on matrices only (biases, LayerNorms excluded).

    ``fused=None`` takes torch's fused kernel where the device has one; ``False`` the multi-tensor
    one, which Lightning's mixed precision needs to clip gradients (a fused AdamW unscales them itself).

    >>> configure_optimizer(nn.Linear(2, 2), lr=1e-3, weight_decay=0.1, fused=False).defaults["fused"]
    False
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if fused is False:
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=False)
    try:  # one fused kernel instead of ~10 small ops per parameter: on CPU ~5% of a small model's step
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=True)
    except RuntimeError:  # a device without a fused AdamW
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
