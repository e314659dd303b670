"""Batched PyTorch probe trainer: many independent probes on one resident layer matrix.

A *probe batch* is ``P`` probes that all read the same resident layer matrix ``X [N, D]``; probe ``p`` trains on the
rows ``rows[p]`` (padded with weight 0 to a common length) and is fitted for ``K`` L2 strengths, so the weights are
one stacked tensor ``[P, K, D, C]``. Probes never see each other's rows and every ``(probe, strength)`` problem is
solved independently (its own line search, convergence test and iteration count).

Objective of one probe (features standardised with the probe's own training mean and SD, rows weighted by
``weight`` normalised to sum to 1)::

    mean_i CE(y_i, x_i W + b)  +  (lambda / 2) * ||W||_F^2          (bias not penalised)

This is scikit-learn's ``LogisticRegression`` objective ``C * sum_i CE_i + ||W||^2 / 2`` divided by ``C * n``:
the two have the same minimiser when ``C = 1 / (lambda * n)`` (``n`` = number of training tokens), and
``TrainerConfig.tol`` is scikit-learn's ``tol`` for ``lbfgs`` (stop at ``max |gradient| <= tol``).

The linear probe is solved exactly by :mod:`phonefair.probes.solver` (Kronecker-preconditioned L-BFGS with exact
line searches, bfloat16 data and products where the hardware has them). :func:`fit_select` chooses ``lambda`` per
probe on held-out speakers and refits, at a cost of ~2 single fits for a 4-value grid. The MLP probe (and, on
request, the linear one) is trained with mini-batch Adam and a cosine learning-rate decay.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from phonefair.errors import ConfigError, DataError
from phonefair.probes.solver import (PRECISIONS, FeatureBasis, LinearSolution, RowSets, Workspace, compute_dtype,
                                     feature_basis, row_sets, solve_linear, thread_count, torch_threads)

PROBE_KINDS = ("linear", "mlp")
OPTIMIZERS = ("auto", "lbfgs", "adam")


@dataclass(frozen=True)
class TrainerConfig:
    """Optimisation settings of the batched trainer (recorded in every table's provenance)."""

    probe: str = "linear"  # "linear" (multinomial logistic regression) | "mlp" (one hidden ReLU layer)
    optimizer: str = "auto"  # linear: "auto"/"lbfgs" = the exact solver, "adam" = mini-batch Adam; MLP: Adam
    tol: float = 1e-4  # exact solver: stop a problem at max |gradient| <= tol (scikit-learn's lbfgs `tol`)
    select_tol: float = 1e-3  # fit_select: tolerance of the fits that only rank the L2 grid (the refit uses tol)
    max_iter: int = 300  # exact solver: iterations per problem
    history: int = 8  # exact solver: L-BFGS curvature pairs kept per problem
    precision: str = "auto"  # "auto" | "bf16" | "fp32": rows and matrix products of the exact solver
    threads: int | str = "auto"  # intra-op threads during a fit ("auto": see solver.thread_count)
    batch_bytes: int = 2**27  # exact solver: working memory per batch of row sets (docs/probes.md "Memory")
    pilot: bool = True  # exact solver: start every problem from a solved pilot problem (docs/probes.md)
    hidden: int = 256  # MLP hidden width
    epochs: int = 3  # Adam passes over each probe's rows
    batch_size: int = 2048  # Adam rows per probe per step
    lr: float = 0.005  # Adam peak learning rate (cosine decay to lr / 100)
    precondition: bool = True  # linear probe + Adam: optimise in decorrelated coordinates (same optimum)
    precondition_rows: int = 20000  # rows used to estimate the feature correlation
    precondition_rank: int = 128  # eigen-directions preconditioned exactly (the rest share one scale)
    chunk_rows: int = 4096  # rows per chunk when gathering / predicting

    def __post_init__(self) -> None:
        if self.probe not in PROBE_KINDS:
            raise ConfigError(f"TrainerConfig.probe must be one of {PROBE_KINDS}, got {self.probe!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"TrainerConfig.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.probe == "mlp" and self.optimizer == "lbfgs":
            raise ConfigError("the MLP probe is trained with Adam; use optimizer='auto' or 'adam'")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"TrainerConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("hidden", "max_iter", "history", "epochs", "batch_size", "chunk_rows", "batch_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainerConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "tol", "select_tol"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"TrainerConfig.{name} must be > 0, got {getattr(self, name)}")
        thread_count(self.threads) if self.threads != "auto" else None  # validates the type and range

    def to_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @property
    def exact(self) -> bool:
        """Whether the linear probe goes to the exact solver."""
        return self.probe == "linear" and self.optimizer != "adam"


@dataclass
class BatchedProbes:
    """``P x K`` fitted probes. ``mean``/``scale`` [P, D] are each probe's training standardisation."""

    kind: str
    mean: torch.Tensor  # [P, D]
    scale: torch.Tensor  # [P, D]
    params: dict[str, torch.Tensor]  # linear: W [P,K,D,C], b [P,K,C]; mlp: W1 [P,K,D,H], b1, W2 [P,K,H,C], b2
    class_mask: torch.Tensor  # [P, C] bool: classes present in the probe's training rows
    optimizer: str = ""
    n_iter: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        w = self.params["W"] if self.kind == "linear" else self.params["W1"]
        return int(w.shape[0]), int(w.shape[1])

    def _mask(self, logits: torch.Tensor) -> torch.Tensor:
        # logits [P, K, n, C]: a probe may only predict classes it was trained on (nothing to do when all present)
        if bool(self.class_mask.all()):
            return logits
        return logits.masked_fill(~self.class_mask[:, None, None, :], float("-inf"))

    def logits_gathered(self, xg: torch.Tensor) -> torch.Tensor:
        """Logits ``[P, K, n, C]`` for per-probe rows ``xg [P, n, D]`` (raw, unstandardised features)."""
        return self._mask(_forward(self.kind, _fold(self.params, self.kind, self.mean, self.scale), xg))

    def predict(self, x: torch.Tensor, chunk_rows: int = 4096) -> torch.Tensor:
        """Predicted class ``[n, P, K]`` of every probe for shared rows ``x [n, D]``."""
        P, K = self.shape
        # fold the standardisation into the first layer so every probe reads the same un-copied rows
        w = self.params["W"] if self.kind == "linear" else self.params["W1"]
        b = self.params["b"] if self.kind == "linear" else self.params["b1"]
        wf = w / self.scale[:, None, :, None]
        bf = b - torch.einsum("pd,pkdc->pkc", self.mean / self.scale, w)
        D, H = wf.shape[2], wf.shape[3]
        wflat = wf.permute(2, 0, 1, 3).reshape(D, P * K * H)
        all_present = bool(self.class_mask.all())
        out = []
        for start in range(0, x.shape[0], chunk_rows):
            h = (x[start:start + chunk_rows] @ wflat).reshape(-1, P, K, H) + bf
            if self.kind == "mlp":
                h = torch.einsum("npkh,pkhc->npkc", torch.relu(h), self.params["W2"]) + self.params["b2"]
            if not all_present:
                h = h.masked_fill(~self.class_mask[None, :, None, :], float("-inf"))
            out.append(h.argmax(-1))
        if not out:
            return torch.zeros((0, P, K), dtype=torch.long, device=x.device)
        return torch.cat(out)


def _forward(kind: str, params: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """z [P, n, D] (standardised) -> logits [P, K, n, C]."""
    if kind == "linear":
        return torch.einsum("pnd,pkdc->pknc", z, params["W"]) + params["b"][:, :, None, :]
    h = torch.relu(torch.einsum("pnd,pkdh->pknh", z, params["W1"]) + params["b1"][:, :, None, :])
    return torch.einsum("pknh,pkhc->pknc", h, params["W2"]) + params["b2"][:, :, None, :]


def _penalty(kind: str, params: dict[str, torch.Tensor], l2: torch.Tensor) -> torch.Tensor:
    names = ("W",) if kind == "linear" else ("W1", "W2")
    return sum(0.5 * (l2 * params[n].pow(2).sum((2, 3))).sum() for n in names)  # type: ignore[return-value]


def _log_softmax_pick(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p(y) for logits [P,K,n,C] and y [P,n] -> [P,K,n].

    CPU log_softmax over a short last dimension (C ~ 40) is ~10x slower than over a middle one, so the class axis
    is moved first.
    """
    lt = logits.transpose(-1, -2).contiguous()  # [P, K, C, n]
    logp = torch.log_softmax(lt, dim=2)
    return logp.gather(2, y[:, None, None, :].expand(-1, lt.shape[1], 1, -1)).squeeze(2)


def _weighted_ce(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per-probe weighted mean cross-entropy: logits [P,K,n,C], y [P,n], w [P,n] -> [P, K]."""
    nll = -_log_softmax_pick(logits, y)
    return (nll * w[:, None, :]).sum(-1) / w.sum(-1).clamp_min(1.0)[:, None]


def _gather_chunk(chunk_rows: int, n_probes: int, dim: int, budget_bytes: int = 128 * 2**20) -> int:
    """Positions per chunk so a gathered ``[P, chunk, D]`` float64 block stays within ``budget_bytes``."""
    return max(1, min(chunk_rows, budget_bytes // max(1, 8 * n_probes * dim)))


def standardisation(x: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor,
                    chunk_rows: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-probe mean and SD ``[P, D]`` of ``x[rows[p]]`` (weighted; SD 0 replaced by 1).

    Computed as membership-matrix products over chunks of resident rows (no per-probe gather): sums of the rows
    centred on the global mean, accumulated in float64, so float32 cancellation does not bite.
    """
    P, N = rows.shape[0], x.shape[0]
    member = torch.zeros(P, N, dtype=x.dtype, device=x.device).scatter_add_(1, rows, weight.to(x.dtype))
    g = x.mean(0, dtype=torch.float64)
    gf = g.to(x.dtype)
    s = torch.zeros(P, x.shape[1], dtype=torch.float64, device=x.device)
    ss = torch.zeros_like(s)
    for start in range(0, N, chunk_rows):
        xc = x[start:start + chunk_rows] - gf
        m = member[:, start:start + chunk_rows]
        s += (m @ xc).double()
        ss += (m @ (xc * xc)).double()
    n = member.double().sum(1, keepdim=True).clamp_min(1.0)
    mc = s / n
    var = (ss / n - mc**2).clamp_min(0.0)
    sd = var.sqrt()
    sd = torch.where(sd > 1e-8 * (1.0 + g.abs()), sd, torch.ones_like(sd))  # constant feature: leave it unscaled
    return (mc + g).to(x.dtype), sd.to(x.dtype)


def _fold(params: dict[str, torch.Tensor], kind: str, mean: torch.Tensor,
          scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """First-layer weights acting on *raw* rows: ``((x - m)/s) W + b = x (W/s) + (b - (m/s) W)``."""
    wn, bn = ("W", "b") if kind == "linear" else ("W1", "b1")
    w = params[wn]
    out = dict(params)
    out[wn] = w / scale[:, None, :, None]
    out[bn] = params[bn] - (w * (mean / scale)[:, None, :, None]).sum(2)
    return out


def _init_params(kind: str, P: int, K: int, D: int, C: int, hidden: int, gen: torch.Generator,
                 device: torch.device) -> dict[str, torch.Tensor]:
    if kind == "linear":
        return {"W": torch.zeros(P, K, D, C, device=device), "b": torch.zeros(P, K, C, device=device)}
    # He-style init for the hidden layer, small output layer; seeded so a probe's seed fixes its start
    w1 = torch.randn(P, K, D, hidden, generator=gen, device=device) * math.sqrt(2.0 / D)
    w2 = torch.randn(P, K, hidden, C, generator=gen, device=device) * math.sqrt(1.0 / hidden)
    return {"W1": w1, "b1": torch.zeros(P, K, hidden, device=device), "W2": w2,
            "b2": torch.zeros(P, K, C, device=device)}


def _check_inputs(x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor,
                  class_mask: torch.Tensor, name: str = "fit_batched") -> None:
    if x.ndim != 2 or rows.ndim != 2 or rows.shape != weight.shape or class_mask.shape[0] != rows.shape[0]:
        raise DataError(f"{name}: inconsistent shapes x{tuple(x.shape)} rows{tuple(rows.shape)} "
                        f"weight{tuple(weight.shape)} class_mask{tuple(class_mask.shape)}")
    live = weight > 0
    yr = y[rows]
    if ((yr < 0) & live).any():
        raise DataError(f"{name}: a training row has no class (y = -1)")
    if (weight < 0).any():
        raise DataError(f"{name}: row weights must be >= 0")
    if (live.sum(1) == 0).any():
        raise DataError(f"{name}: probe(s) {torch.nonzero(live.sum(1) == 0).flatten().tolist()} have no rows")
    seen = class_mask.gather(1, yr.clamp(0, class_mask.shape[1] - 1))
    if (live & ~seen).any():
        bad = torch.nonzero((live & ~seen).any(1)).flatten().tolist()
        raise DataError(f"{name}: probe(s) {bad} train on a class their class_mask excludes")


def fit_batched(x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor,
                class_mask: torch.Tensor, l2: torch.Tensor, config: TrainerConfig = TrainerConfig(), *,
                seed: int = 0, workspace: Workspace | None = None) -> BatchedProbes:
    """Fit ``P x K`` probes, each ``(probe, strength)`` problem independently.

    Parameters
    ----------
    x: ``[N, D]`` float32 layer matrix (resident rows only).
    y: ``[N]`` long class index of every resident row (``-1`` allowed for rows no probe trains on).
    rows: ``[P, n]`` long indices into ``x``; pad with any valid index and weight 0.
    weight: ``[P, n]`` float, 1 for real rows (any positive weight), 0 for padding.
    class_mask: ``[P, C]`` bool, the classes each probe may predict (those in its training rows).
    l2: ``[P, K]`` L2 strengths (lambda in the objective above).
    seed: fixes the row order of the exact solver (its line-search subsample), mini-batch order and MLP
        initialisation. The same inputs, seed and thread count give the same probes.
    workspace: exact solver's buffers, reused when the same one is passed to consecutive fits (e.g. the layers of
        a run; never to two fits at once). Default: fresh buffers, freed on return.

    The exact solver reports per problem in ``extra``: ``converged`` / ``grad_max`` / ``n_iter`` ``[P, K]``.
    Probes with identical rows and weights share one gathered copy; identical problems are solved once.
    """
    if x.ndim != 2 or rows.ndim != 2 or rows.shape != weight.shape or l2.ndim != 2 or l2.shape[0] != rows.shape[0]:
        raise DataError(f"fit_batched: inconsistent shapes x{tuple(x.shape)} rows{tuple(rows.shape)} "
                        f"weight{tuple(weight.shape)} l2{tuple(l2.shape)}")
    if (l2 < 0).any():
        raise ConfigError("L2 strengths must be >= 0")
    _check_inputs(x, y, rows, weight, class_mask)
    with torch_threads(thread_count(config.threads)):
        if config.exact:
            return _fit_exact(x, y, rows, weight, class_mask.to(x.device), l2, config, seed=seed,
                              ws=Workspace() if workspace is None else workspace)
        return _fit_iterative(x, y, rows, weight, class_mask, l2, config, seed=seed)


def _fit_iterative(x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor,
                   class_mask: torch.Tensor, l2: torch.Tensor, config: TrainerConfig, *, seed: int) -> BatchedProbes:
    """Mini-batch Adam (the MLP probe, or ``optimizer="adam"``)."""
    P, n = rows.shape
    K = l2.shape[1]
    D = x.shape[1]
    C = class_mask.shape[1]
    dev = x.device
    yr = y[rows].clamp_min(0)
    mean, scale = standardisation(x, rows, weight)
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    params = _init_params(config.probe, P, K, D, C, config.hidden, gen, dev)
    for t in params.values():
        t.requires_grad_(True)
    probes = BatchedProbes(kind=config.probe, mean=mean, scale=scale, params=params, class_mask=class_mask.to(dev))
    probes.n_iter = _fit_adam(probes, x, yr, rows, weight, l2, config, gen)
    probes.optimizer = "adam"
    for t in params.values():
        t.requires_grad_(False)
    return probes


def _stack_padded(parts: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row/weight tensors of different widths stacked along the probe axis (padding: weight 0)."""
    n = max(r.shape[1] for r, _ in parts)
    rows = torch.cat([torch.nn.functional.pad(r, (0, n - r.shape[1])) for r, _ in parts])
    w = torch.cat([torch.nn.functional.pad(w, (0, n - w.shape[1])) for _, w in parts])
    return rows, w


def _distinct_sets(rows: torch.Tensor, weight: torch.Tensor) -> tuple[list[tuple[torch.Tensor, torch.Tensor]],
                                                                      list[int]]:
    """The distinct (rows, weight) sets among the probes (rows sorted, padding dropped) and each probe's set."""
    sets: list[tuple[torch.Tensor, torch.Tensor]] = []
    of: list[int] = []
    for p in range(rows.shape[0]):
        live = weight[p] > 0
        r, w = rows[p][live], weight[p][live]
        order = torch.argsort(r)
        r, w = r[order], w[order]
        for i, (r2, w2) in enumerate(sets):
            if r2.shape == r.shape and torch.equal(r2, r) and torch.equal(w2, w):
                of.append(i)
                break
        else:
            of.append(len(sets))
            sets.append((r, w))
    return sets, of


@dataclass
class _Problems:
    """Distinct (set, strength, classes) problems of a fit and, for every (probe, strength), which one it is."""

    set_of: torch.Tensor  # [Q]
    lam: torch.Tensor  # [Q]
    present: torch.Tensor  # [Q, C]
    index: torch.Tensor  # [P, K] -> problem


def _problems(set_of_probe: Sequence[int], l2: torch.Tensor, class_mask: torch.Tensor) -> _Problems:
    keys: dict[tuple[int, float, bytes], int] = {}
    P, K = l2.shape
    index = torch.empty(P, K, dtype=torch.long)
    sets, lams, masks = [], [], []
    for p in range(P):
        mb = class_mask[p].cpu().numpy().tobytes()
        for k in range(K):
            key = (int(set_of_probe[p]), float(l2[p, k]), mb)
            if key not in keys:
                keys[key] = len(sets)
                sets.append(key[0])
                lams.append(key[1])
                masks.append(class_mask[p])
            index[p, k] = keys[key]
    dev = class_mask.device
    return _Problems(set_of=torch.tensor(sets, dtype=torch.long, device=dev),
                     lam=torch.tensor(lams, dtype=torch.float32, device=dev), present=torch.stack(masks),
                     index=index.to(dev))


def _to_probes(rs: RowSets, set_of_probe: Sequence[int], pr: _Problems, sol_W: torch.Tensor, sol_b: torch.Tensor,
               class_mask: torch.Tensor, extra: dict[str, object], n_iter: int) -> BatchedProbes:
    so = torch.tensor(list(set_of_probe), dtype=torch.long, device=sol_W.device)
    W = sol_W[pr.index].transpose(-1, -2).contiguous()  # [P, K, D, C]
    b = sol_b[pr.index]
    return BatchedProbes(kind="linear", mean=rs.mean[so], scale=rs.scale[so], params={"W": W, "b": b},
                         class_mask=class_mask, optimizer="lbfgs", n_iter=n_iter, extra=extra)


def _fit_exact(x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor, class_mask: torch.Tensor,
               l2: torch.Tensor, config: TrainerConfig, *, seed: int, ws: Workspace) -> BatchedProbes:
    sets, set_of = _distinct_sets(rows, weight)
    dt = compute_dtype(config.precision, x.device, min(int(r.numel()) for r, _ in sets))
    rs = row_sets(x, y, sets, dt, workspace=ws)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    basis = feature_basis(rs, gen)
    pr = _problems(set_of, l2, class_mask)
    pilot = _pilot_problem(rs, pr) if config.pilot else None
    sol = _solve(rs, pr, basis, config, gen, ws=ws) if pilot is None else \
        _solve_from_pilot(rs, pr, pilot, basis, config, gen, ws)
    extra: dict[str, object] = {
        "pilot_problem": pilot,
        "converged": sol.converged[pr.index], "grad_max": sol.grad_max[pr.index], "n_iter": sol.n_iter[pr.index],
        "objective": sol.objective[pr.index], "precision": str(dt).replace("torch.", ""),
        "threads": torch.get_num_threads(), "distinct_row_sets": len(rs), "distinct_problems": int(pr.lam.numel())}
    return _to_probes(rs, set_of, pr, sol.W, sol.b, class_mask, extra, int(sol.n_iter.max()))


def _solve(rs: RowSets, pr: _Problems, basis: FeatureBasis, config: TrainerConfig, gen: torch.Generator,
           q: slice | torch.Tensor = slice(None), *, tol: float | None = None,
           init: tuple[torch.Tensor, torch.Tensor] | None = None, ws: Workspace | None = None) -> LinearSolution:
    """:func:`solve_linear` on problems ``q`` of ``pr`` with the config's solver settings (``tol`` overrides)."""
    return solve_linear(rs, pr.set_of[q], pr.lam[q], pr.present[q], basis, tol=config.tol if tol is None else tol,
                        max_iter=config.max_iter, history=config.history, batch_bytes=config.batch_bytes, gen=gen,
                        init=init, workspace=ws)


def _pilot_problem(rs: RowSets, pr: _Problems) -> int | None:
    """The problem solved first (the one on the largest row set), or None when there are too few problems for a
    shared start to pay."""
    if int(pr.lam.numel()) < 3:
        return None
    sizes = [int(rs.members[s].numel()) for s in pr.set_of.tolist()]
    return max(range(len(sizes)), key=lambda q: (sizes[q], -q))


def _mapped_start(rs: RowSets, W: torch.Tensor, b: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                  present: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A solution ``(W [n, C, D], b [n, C])`` of row sets ``src`` written in the standardisation of row sets ``dst``
    (the same logits for every raw row). With ``present`` (the source's classes, [n, C]), the biases are also moved
    from the source's class frequencies to the destination's (a prior shift), and classes the source lacks start
    at the destination's frequency."""
    ratio = rs.scale[dst] / rs.scale[src]
    W_t = W * ratio[:, None, :]
    b_t = b + (W * ((rs.mean[dst] - rs.mean[src]) / rs.scale[src])[:, None, :]).sum(-1)
    if present is None:
        return W_t, b_t
    C = b.shape[1]

    def log_freq(sets: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.stack([torch.zeros(C, device=b.device).scatter_add_(0, rs.labels[s], rs.weights[s])
                                      for s in sets.tolist()]).clamp_min(1e-12))

    lf_s, lf_d = log_freq(src), log_freq(dst)
    rel = torch.where(present, b_t - lf_s, torch.zeros_like(b_t))
    typical = rel.sum(1, keepdim=True) / present.sum(1, keepdim=True).clamp_min(1)
    return W_t * present[:, :, None], lf_d + torch.where(present, rel, typical.expand_as(rel))


def _solve_from_pilot(rs: RowSets, pr: _Problems, pilot: int, basis: FeatureBasis, config: TrainerConfig,
                      gen: torch.Generator, ws: Workspace | None = None) -> LinearSolution:
    """Solve the pilot problem, then every other problem from the pilot's solution mapped into its rows'
    standardisation and class frequencies. The problems stay independent (each keeps its own optimum and stop
    rule); the shared start only shortens their paths: the probes of one layer (pooled, per-group, leave-one-out
    populations, λ values) have nearby optima, ~8 → ~6 iterations on the benchmark (docs/probes.md)."""
    Q = int(pr.lam.numel())
    one = slice(pilot, pilot + 1)
    first = _solve(rs, pr, basis, config, gen, one, ws=ws)
    rest = torch.tensor([q for q in range(Q) if q != pilot], dtype=torch.long, device=pr.set_of.device)
    n = int(rest.numel())
    W0, b0 = _mapped_start(rs, first.W.expand(n, -1, -1), first.b.expand(n, -1), pr.set_of[one].expand(n),
                           pr.set_of[rest], pr.present[one].expand(n, -1))
    sol = _solve(rs, pr, basis, config, gen, rest, init=(W0, b0), ws=ws)
    out = LinearSolution(**{k: torch.empty((Q, *v.shape[1:]), dtype=v.dtype, device=v.device)
                            for k, v in vars(sol).items()})
    for k in vars(sol):
        getattr(out, k)[rest] = getattr(sol, k)
        getattr(out, k)[pilot] = getattr(first, k)[0]
    return out


@dataclass
class Selection:
    """Result of :func:`fit_select`: every probe refitted on its full rows at the L2 strength it chose."""

    probes: BatchedProbes  # [P, 1]
    l2: torch.Tensor  # [P] chosen lambda
    val_accuracy: torch.Tensor  # [P] validation accuracy of the chosen lambda (fits on the fit rows)
    val_accuracy_grid: torch.Tensor  # [P, G] validation accuracy of every grid value
    n_iter: dict[str, int]  # solver iterations of the selection fits and of the refits (max over problems)


def fit_select(x: torch.Tensor, y: torch.Tensor, fit_rows: torch.Tensor, fit_w: torch.Tensor,
               val_rows: torch.Tensor, val_w: torch.Tensor, full_rows: torch.Tensor, full_w: torch.Tensor,
               fit_mask: torch.Tensor, full_mask: torch.Tensor, grid: Sequence[float],
               config: TrainerConfig = TrainerConfig(), *, seed: int = 0,
               workspace: Workspace | None = None) -> Selection:
    """Choose lambda per probe on held-out validation rows, then refit on the full rows: the linear probe's
    hyper-parameter selection at about twice the cost of one fit for a 4-value grid (docs/probes.md).

    For probe ``p``: every ``lambda`` of ``grid`` is fitted on ``fit_rows[p]`` (all grid values share one gathered
    copy of the rows and one matrix product per iteration, solved to ``config.select_tol``: these fits only rank the
    grid); each is scored by weighted accuracy on ``val_rows[p]`` (typically speakers held out of the fit rows); the
    most accurate ``lambda`` wins (ties: the larger, i.e. the simpler probe); the probe is refitted on
    ``full_rows[p]`` at that ``lambda`` to ``config.tol``, starting from its selection fit. Row tensors are
    ``[P, n]`` padded with weight 0 as in :func:`fit_batched`; ``fit_mask`` / ``full_mask`` are the classes of the fit
    and full rows. A validation row whose class the fit never saw counts as an error.

    Validation scores use the compute precision (bfloat16 logits where available); they only rank the grid.
    ``workspace``: as in :func:`fit_batched`.
    """
    lams = sorted(float(v) for v in grid)
    if not lams or any(v < 0 or not math.isfinite(v) for v in lams):
        raise ConfigError(f"fit_select: grid must be non-empty L2 strengths >= 0, got {list(grid)}")
    if not config.exact:
        raise ConfigError("fit_select needs the exact linear solver (probe='linear', optimizer 'auto' or 'lbfgs')")
    _check_inputs(x, y, fit_rows, fit_w, fit_mask, "fit_select (fit rows)")
    _check_inputs(x, y, full_rows, full_w, full_mask, "fit_select (full rows)")
    if val_rows.ndim != 2 or val_rows.shape != val_w.shape or val_rows.shape[0] != fit_rows.shape[0]:
        raise DataError(f"fit_select: val_rows{tuple(val_rows.shape)} / val_w{tuple(val_w.shape)} do not match "
                        f"{fit_rows.shape[0]} probes")
    if (val_w > 0).sum(1).eq(0).any():
        raise DataError("fit_select: every probe needs validation rows")
    if ((y[val_rows] < 0) & (val_w > 0)).any():
        raise DataError("fit_select: a validation row has no class (y = -1)")
    P = fit_rows.shape[0]
    dev = x.device
    fit_mask, full_mask = fit_mask.to(dev), full_mask.to(dev)
    with torch_threads(thread_count(config.threads)):
        sets, of = _distinct_sets(*_stack_padded([(fit_rows, fit_w), (full_rows, full_w)]))
        dt = compute_dtype(config.precision, dev, min(int(r.numel()) for r, _ in sets))
        val_sets, val_of = _distinct_sets(val_rows, val_w)
        ws = Workspace() if workspace is None else workspace
        rs = row_sets(x, y, sets + val_sets, dt, workspace=ws)
        fit_of, full_of = of[:P], of[P:]
        val_of = [len(sets) + v for v in val_of]
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        basis = feature_basis(rs, gen)
        grid_t = torch.tensor(lams, dtype=torch.float32, device=dev)
        pr = _problems(fit_of, grid_t.expand(P, -1), fit_mask)
        sel = _solve(rs, pr, basis, config, gen, tol=config.select_tol, ws=ws)
        acc = _score(rs, pr, sel.W, sel.b, fit_of, val_of, fit_mask)  # [P, G]
        top = acc >= acc.max(1, keepdim=True).values - 1e-12
        best = len(lams) - 1 - torch.argmax(top.flip(1).to(torch.int8), dim=1)  # ties -> the larger lambda
        chosen = grid_t[best]
        # refit on the full rows, starting from the selection fit expressed in the full rows' standardisation
        q_best = pr.index[torch.arange(P, device=dev), best]
        fo = torch.tensor(fit_of, device=dev)
        uo = torch.tensor(full_of, device=dev)
        W0, b0 = _mapped_start(rs, sel.W[q_best], sel.b[q_best], fo, uo)
        pr2 = _problems(full_of, chosen[:, None], full_mask)
        first = pr2.index[:, 0]
        init_W = torch.zeros(int(pr2.lam.numel()), *W0.shape[1:], device=dev)
        init_b = torch.zeros(int(pr2.lam.numel()), W0.shape[1], device=dev)
        init_W[first], init_b[first] = W0, b0
        ref = _solve(rs, pr2, basis, config, gen, init=(init_W, init_b), ws=ws)
        extra: dict[str, object] = {
            "converged": ref.converged[pr2.index], "grad_max": ref.grad_max[pr2.index],
            "n_iter": ref.n_iter[pr2.index], "objective": ref.objective[pr2.index],
            "precision": str(dt).replace("torch.", ""), "threads": torch.get_num_threads(),
            "distinct_row_sets": len(rs), "distinct_problems": int(pr.lam.numel() + pr2.lam.numel())}
        probes = _to_probes(rs, full_of, pr2, ref.W, ref.b, full_mask, extra, int(ref.n_iter.max()))
        return Selection(probes=probes, l2=chosen, val_accuracy=acc[torch.arange(P, device=dev), best],
                         val_accuracy_grid=acc,
                         n_iter={"select": int(sel.n_iter.max()), "refit": int(ref.n_iter.max())})


def _score(rs: RowSets, pr: _Problems, W: torch.Tensor, b: torch.Tensor, fit_of: Sequence[int],
           val_of: Sequence[int], mask: torch.Tensor) -> torch.Tensor:
    """Weighted validation accuracy ``[P, G]`` of each probe's grid of problems on its validation set."""
    P, G = pr.index.shape
    D = rs.dim
    out = torch.zeros(P, G, dtype=torch.float64, device=W.device)
    for p in range(P):
        q = pr.index[p]
        a, c = rs.fold(torch.tensor([fit_of[p]], device=W.device))
        d = torch.zeros(G, W.shape[1], rs.data.shape[1], device=W.device)
        d[..., :D] = W[q] * a[:, None, :]
        d[..., D] = b[q] + (W[q] * c[:, None, :]).sum(-1)
        zv = rs.data[rs.members[val_of[p]]]
        logits = (d.reshape(-1, d.shape[-1]).to(zv.dtype) @ zv.T).view(G, -1, zv.shape[0]).to(torch.float32)
        if not bool(mask[p].all()):
            logits.masked_fill_(~mask[p][None, :, None], -math.inf)
        hit = (logits.argmax(1) == rs.labels[val_of[p]][None, :]).to(torch.float64)
        out[p] = hit @ rs.weights[val_of[p]].to(torch.float64)
    return out


@dataclass
class Preconditioner:
    """``W = c (V + U diag(s - 1) U^T V)``: ``Σ^{-1/2}`` on the top-``r`` eigen-directions of the feature correlation
    Σ, a constant ``c`` on the rest (``c = 1/sqrt(mean of the remaining eigenvalues)``).

    Only the optimisation path uses it (Adam runs on ``V``): the objective, and so the optimum, is unchanged. It
    removes the strong feature correlations that make first-order methods crawl on encoder features; low rank keeps
    its cost per step at ``O(D r C)`` instead of ``O(D² C)``.
    """

    u: torch.Tensor  # [D, r]
    s: torch.Tensor  # [r]
    c: float

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        P, K, D, C = v.shape
        flat = v.permute(2, 0, 1, 3).reshape(D, P * K * C)  # one [D, P*K*C] matrix: two plain GEMMs
        corr = self.u @ ((self.s - 1)[:, None] * (self.u.T @ flat))
        return self.c * (v + corr.reshape(D, P, K, C).permute(1, 2, 0, 3))


def preconditioner(x: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor, gen: torch.Generator,
                   max_rows: int = 20000, rank: int = 128) -> Preconditioner:
    """Estimate a :class:`Preconditioner` from the z-scored training rows (union over probes, subsampled)."""
    union = torch.unique(rows[weight > 0])
    if union.numel() > max_rows:
        union = union[torch.randperm(union.numel(), generator=gen, device=union.device)[:max_rows]]
    z = x[union]
    z = (z - z.mean(0)) / z.std(0).clamp_min(1e-8)
    cov = ((z.T @ z) / max(1, z.shape[0] - 1)).double()
    ev, q = torch.linalg.eigh(cov)  # ascending
    ev = ev.clamp_min(1e-3 * float(ev.max()))  # floor: near-null directions are not blown up
    r = min(rank, ev.numel())
    top, u = ev[-r:], q[:, -r:]
    tail = float(ev[:-r].mean()) if r < ev.numel() else 1.0
    return Preconditioner(u=u.to(x.dtype), s=(tail / top).sqrt().to(x.dtype), c=1.0 / math.sqrt(tail))


def _linear_ce_t(w: torch.Tensor, b: torch.Tensor, xg: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
                 mask: torch.Tensor, all_classes: bool) -> torch.Tensor:
    """Weighted mean CE ``[P, K]`` of linear probes with class-major logits ``[P, K, C, m]``.

    ``W^T x^T`` as one bmm gives the class axis before the rows, so log-softmax runs over a middle axis (fast on
    CPU) with no transposed copies.
    """
    P, K, D, C = w.shape
    lt = torch.bmm(w.permute(0, 1, 3, 2).reshape(P, K * C, D), xg.transpose(1, 2)).view(P, K, C, -1)
    lt = lt + b[..., None]
    if not all_classes:
        lt = lt.masked_fill(~mask[:, None, :, None], float("-inf"))
    logp = torch.log_softmax(lt, dim=2)
    nll = -logp.gather(2, y[:, None, None, :].expand(-1, K, 1, -1)).squeeze(2)  # [P, K, m]
    return (nll * weight[:, None, :]).sum(-1) / weight.sum(-1).clamp_min(1.0)[:, None]


def _fit_adam(probes: BatchedProbes, x: torch.Tensor, yr: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor,
              l2: torch.Tensor, config: TrainerConfig, gen: torch.Generator) -> int:
    P, n = rows.shape
    bs = min(config.batch_size, n)
    steps_per_epoch = math.ceil(n / bs)
    total = steps_per_epoch * config.epochs
    pre = config.precondition and probes.kind == "linear"
    if pre:
        pm = preconditioner(x, rows, weight, gen, config.precondition_rows, config.precondition_rank)
        probes.params["W"].requires_grad_(False)
        v = torch.zeros_like(probes.params["W"], requires_grad=True)
        opt_params = [v, probes.params["b"]]
    else:
        opt_params = list(probes.params.values())
    optim = torch.optim.Adam(opt_params, lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=total, eta_min=config.lr / 100)
    mask = probes.class_mask
    all_classes = bool(mask.all())
    # one reused gather buffer: allocating a fresh [P, bs, D] block every step costs more than the gather itself
    buf = torch.empty(P * bs, x.shape[1], dtype=x.dtype, device=x.device)
    # rows per probe are the same in every epoch; only their order is reshuffled (independently per probe)
    for _ in range(config.epochs):
        order = torch.argsort(torch.rand(P, n, generator=gen, device=x.device), dim=1)
        r_ep, w_ep, y_ep = rows.gather(1, order), weight.gather(1, order), yr.gather(1, order)
        for s in range(steps_per_epoch):
            sl = slice(s * bs, (s + 1) * bs)
            params = probes.params
            if pre:
                params = {"W": pm.apply(v), "b": probes.params["b"]}
            # standardisation folded into the weights: the gathered rows are used as they are
            folded = _fold(params, probes.kind, probes.mean, probes.scale)
            idx = r_ep[:, sl]
            m = idx.shape[1]
            xg = torch.index_select(x, 0, idx.reshape(-1), out=buf[:P * m]).view(P, m, -1)
            if probes.kind == "linear":
                data = _linear_ce_t(folded["W"], folded["b"], xg, y_ep[:, sl], w_ep[:, sl], mask, all_classes)
            else:
                logits = _forward(probes.kind, folded, xg).masked_fill(~mask[:, None, None, :], float("-inf"))
                data = _weighted_ce(logits, y_ep[:, sl], w_ep[:, sl])
            loss = data.sum() + _penalty(probes.kind, params, l2)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
    if pre:
        with torch.no_grad():
            probes.params["W"] = pm.apply(v)
    return total


def evaluate_gathered(probes: BatchedProbes, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor,
                      weight: torch.Tensor, chunk_rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Accuracy and mean cross-entropy ``[P, K]`` of every probe on its own rows (e.g. its validation speakers).

    A row whose class the probe never saw counts as an error (it cannot be predicted) and adds no log-loss.
    """
    P, K = probes.shape
    chunk_rows = _gather_chunk(chunk_rows, P * K, x.shape[1])
    correct = torch.zeros(P, K, dtype=torch.float64, device=x.device)
    ce = torch.zeros_like(correct)
    for start in range(0, rows.shape[1], chunk_rows):
        r, w = rows[:, start:start + chunk_rows], weight[:, start:start + chunk_rows]
        logits = probes.logits_gathered(x[r])  # [P, K, c, C]
        yt = y[r]
        ok = (logits.argmax(-1) == yt[:, None, :]).double()
        correct += (ok * w[:, None, :]).sum(-1)
        seen = probes.class_mask.gather(1, yt.clamp_min(0)) & (yt >= 0)
        logp = _log_softmax_pick(logits, yt.clamp_min(0))
        nll = torch.where(seen[:, None, :] & (w > 0)[:, None, :], -logp.double(), 0.0)
        ce += (nll * w[:, None, :]).sum(-1)
    n = weight.double().sum(1, keepdim=True).clamp_min(1.0)
    return correct / n, ce / n


__all__ = ["BatchedProbes", "Preconditioner", "Selection", "TrainerConfig", "evaluate_gathered",
           "fit_batched", "fit_select", "preconditioner", "standardisation"]
