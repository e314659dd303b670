"""Training objectives: the CTC phone head, the speaker-group classifier, the gradient-reversal layer and the
schedule of the adversarial weight.

How the fairness objectives use these pieces (see ``docs/finetune.md``):

* **ctc** (control): ``L = L_ctc``.
* **adversarial**: ``L = L_ctc + L_group(C(GRL_λ(pool(h))))``. The classifier ``C`` learns to predict the speaker
  group; the gradient-reversal layer multiplies the gradient flowing back into the encoder by ``-λ(t)``, so the
  encoder is pushed to make the group *less* predictable (Ganin & Lempitsky 2015).
* **domain** (domain-enhancing): ``L = L_ctc + w · L_group(C(pool(h)))`` with no reversal: group prediction is a
  cooperative auxiliary task, plus group-balanced batches.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["GradientReversal", "grad_reverse", "GroupClassifier", "CTCHead", "WeightSchedule", "masked_mean"]


class GradientReversal(torch.autograd.Function):
    """Identity in the forward pass; multiplies the incoming gradient by ``-scale`` in the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = float(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.scale * grad_output, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Gradient-reversal layer: ``y = x`` but ``dL/dx = -scale · dL/dy``."""
    if scale < 0:
        raise ValueError(f"gradient-reversal scale must be >= 0, got {scale}")
    return GradientReversal.apply(x, scale)  # type: ignore[no-any-return]


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``h [B, T, D]`` over the frames where ``mask [B, T]`` is True (padding excluded)."""
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


class CTCHead(nn.Module):
    """Dropout + linear projection from encoder states to CTC log-probabilities (blank = class 0)."""

    def __init__(self, hidden_size: int, n_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden_size, n_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # log-softmax in float32: CTC under autocast is numerically fragile in half precision
        return torch.log_softmax(_at_least_float32(self.proj(self.dropout(h))), dim=-1)


class GroupClassifier(nn.Module):
    """Speaker-group classifier on utterance-pooled encoder states: mean over valid frames → MLP → logits."""

    def __init__(self, hidden_size: int, n_groups: int, *, bottleneck: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        if n_groups < 2:
            raise ValueError(f"a group classifier needs >= 2 groups, got {n_groups}")
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, bottleneck), nn.ReLU(),
                                 nn.Linear(bottleneck, n_groups))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return _at_least_float32(self.net(masked_mean(h, mask)))


@dataclass(frozen=True)
class WeightSchedule:
    """The adversarial (gradient-reversal) weight ``λ(t)`` over training steps.

    ``kind="dann"``: ``λ = max · (2 / (1 + exp(-gamma · p)) - 1)`` with ``p`` the progress after ``start``
    (Ganin & Lempitsky 2015; ``gamma=10``): near 0 early, when the group classifier is still random and its
    gradients are noise, then rising to ``max``. ``"linear"``: a ramp from 0 to ``max`` over the steps after
    ``start``. ``"constant"``: ``max`` from ``start`` on. Before ``start`` the weight is 0.
    """

    kind: Literal["dann", "linear", "constant"] = "dann"
    max: float = 1.0
    start: int = 0
    gamma: float = 10.0

    def __post_init__(self) -> None:
        if self.kind not in ("dann", "linear", "constant"):
            raise ValueError(f"adv_weight kind must be 'dann', 'linear' or 'constant', got {self.kind!r}")
        if self.max < 0 or self.start < 0:
            raise ValueError(f"adv_weight max and start must be >= 0, got max={self.max}, start={self.start}")

    def __call__(self, step: int, total_steps: int) -> float:
        if step < self.start:
            return 0.0
        if self.kind == "constant":
            return float(self.max)
        p = min(1.0, (step - self.start) / max(1, total_steps - self.start))
        if self.kind == "linear":
            return float(self.max * p)
        return float(self.max * (2.0 / (1.0 + math.exp(-self.gamma * p)) - 1.0))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, spec: WeightSchedule | float | dict[str, Any]) -> WeightSchedule:
        """A schedule from itself, a constant number, or a dict of the fields."""
        if isinstance(spec, WeightSchedule):
            return spec
        if isinstance(spec, int | float):
            return cls(kind="constant", max=float(spec))
        if isinstance(spec, dict):
            unknown = set(spec) - {"kind", "max", "start", "gamma"}
            if unknown:
                raise ValueError(f"adv_weight: unknown field(s) {sorted(unknown)}; use kind, max, start, gamma")
            return cls(**spec)
        raise TypeError(f"adv_weight must be a number, a dict or a WeightSchedule, got {type(spec).__name__}")
