"""Exact multinomial logistic-regression probes, many at once (the linear probe's solver).

One *problem* is one probe at one L2 strength. With ``z`` the probe's standardised features and row weights ``w``
normalised to sum to 1, it minimises ::

    f(W, b) = sum_i w_i CE(y_i, W z_i + b) + (lambda / 2) ||W||_F^2          (bias not penalised)

which is scikit-learn's ``LogisticRegression`` objective divided by ``C n`` (``C = 1 / (lambda n)``). The solver
stops a problem when ``max |grad f| <= tol``, the test scikit-learn's ``lbfgs`` applies with its ``tol`` on the same
objective, so ``tol`` means the same thing on both sides.

Method (docs/probes.md, "Solver"):

* **L-BFGS with a Kronecker-factored initial Hessian.** The Hessian of ``f`` is
  ``sum_i w_i S_i (x) z_i z_i^T + lambda I`` with ``S_i = diag(p_i) - p_i p_i^T``; the solver's ``H0`` is
  ``(A (x) Sigma + lambda I)^-1`` with ``A = sum_i w_i S_i`` (the probe's class curvature, ``C x C``) and ``Sigma``
  the feature correlation (shared by a batch, estimated once from a subsample of its rows). Both factors are
  inverted through their eigendecompositions, so applying ``H0`` costs two ``C x D x D`` products. Feature
  correlations are what make encoder features hard for first-order methods; this removes them, and the class
  factor handles rare classes and the exact ``lambda``.
* **Exact line search on cached logits.** Each iteration computes ``U = Z d`` (the logit change along the
  direction ``d``) once; ``f``, ``f'`` and ``f''`` along the line then cost only element-wise work over the
  logits, so Newton steps on the step length are cheap (on a random 1/32 of the rows for big problems, then one
  evaluation on all rows, with a secant correction when needed). On the subsample only the change of ``f'`` along
  the line is estimated, added to the exact ``f'(0)`` of all rows (a control variate: near the optimum the
  subsample's own ``f'`` is noisier than ``f'(0)`` is large). Exact steps cut the iteration count of L-BFGS from
  11-12 to 7 here.
* **Mixed precision.** The rows ``Z`` and the two products per iteration (``Z d`` and ``R^T Z`` for the gradient)
  run in bfloat16 on CPUs with AMX/AVX512-BF16 and in float16 on CUDA (float32 accumulation), for problems of at
  least ``BF16_MIN_ROWS`` rows; logits, parameters, soft-max, line search and every reduction stay float32.
  Rounding the rows to bfloat16 (2^-9 of each value) moves the optimum slightly: the exact gradient of the
  returned weights stays at ``tol`` (1e-4), but on a hard layer up to ~0.1 point of held-out accuracy
  (docs/probes.md); ``precision="fp16"`` / ``"fp32"`` remove that at a cost.
* **Independent problems.** Every problem has its own line search, curvature pairs, convergence test and
  iteration count; a converged problem leaves the batch, and a row set whose problems have all converged is
  released. Problems that share a row set (several L2 strengths, or duplicated probes) share one gathered copy of
  the rows and one matrix product with ``k x C`` columns, which costs much less than ``k`` products.

The rows of all row sets are standardised globally and stored once in the compute precision, with a constant
column for the bias; each row set is gathered from that copy, and each probe's own standardisation is folded into
its weights (``z = a * x_std + c``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from phonefair.errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
BF16_MIN_ROWS = 16384  # "auto" precision: bfloat16 only when every problem has at least this many rows

# element-wise work on logits runs in column chunks of this size so the temporaries stay in cache (8192: ~3 % faster
# than 4096 on the part-1 benchmark, fewer per-operation overheads)
_CHUNK = 8192
# a problem whose logits have at least this many entries is evaluated on its own (views, no gathers)
_BIG = 1 << 16
# big problems' line-search subsample: 1/_SUB_SHRINK of the rows, at least _SUB_MIN. With the control variate
# (_line_search) its noise barely matters: 1/8 and 1/32 both gave 1.0 full evaluations per iteration on the
# benchmark, 1/32 about 5 % less time
_SUB_SHRINK = 32
_SUB_MIN = 2048
_C2 = 0.1  # line search: accept when |phi'(alpha)| <= _C2 |phi'(0)| (exact steps: fewer L-BFGS iterations)
_REFRESH = 4  # the class curvature A is re-estimated at iterations 1, 2 and every _REFRESH-th


# ----------------------------------------------------------------------------------------------------- settings
def compute_dtype(precision: str, device: torch.device, rows: int) -> torch.dtype:
    """The dtype of the rows and the two matrix products per iteration, for problems of at least ``rows`` rows.

    ``"auto"``, when every problem has at least ``BF16_MIN_ROWS`` rows: float16 on CUDA (tensor cores run it as
    fast as bfloat16, with 8x finer rounding); bfloat16 on CPUs with AMX or AVX512-BF16 (2-6x faster than float32
    there, depending on load; float16 has no matrix units on those CPUs); float32 otherwise. Why the size rule:
    rounding the logit updates and the rows adds per-row noise (relative 2^-9 in bfloat16) whose effect on the
    gradient averages out only as ``1/sqrt(n)`` (about ``1e-3 / sqrt(n)`` on encoder-like data: below 1e-5 from
    ~10^4 rows), and small problems spend their time in per-operation overheads, where 16 bits buy nothing.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if rows < BF16_MIN_ROWS:
        return torch.float32
    if device.type == "cuda":  # float16: as fast as bfloat16 on tensor cores, 8x finer
        return torch.float16
    if device.type == "cpu":
        probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
        try:
            if any(bool(p()) for p in probes if p is not None):
                return torch.bfloat16
        except RuntimeError:  # pragma: no cover  (capability query unavailable)
            pass
    return torch.float32


def thread_count(setting: int | str) -> int:
    """Intra-op threads for a fit. ``"auto"``: all cores the machine leaves idle, else 1.

    Rule: ``idle = cpu_count - load_average(1 min)``; ``"auto"`` gives ``floor(idle)`` when at least 2 cores are
    idle, else 1. Why: on these small tensors two threads on a contended machine ran 4.5x *slower* than one (both
    threads wait for each other at every operation), while on an idle machine they are ~1.5x faster. Where the load
    average is unavailable, 1.
    """
    if isinstance(setting, bool) or not (setting == "auto" or isinstance(setting, int)):
        raise ConfigError(f"threads must be a positive int or 'auto', got {setting!r}")
    if isinstance(setting, int):
        if setting < 1:
            raise ConfigError(f"threads must be >= 1, got {setting}")
        return setting
    cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover  (platforms without a load average)
        return 1
    idle = cpus - load
    return int(idle) if idle >= 2 else 1


@contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(n)`` (yields ``n``); the previous setting is restored afterwards."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


class Workspace:
    """Memory reused by every batch of one fit: the gathered row buffers and the logit-sized buffers.

    Why: a fresh block of this size is new memory from the OS each time, and its page faults cost about as much as
    the work written into it (on the part-1 benchmark ~1.7 GB of faults, 0.6 s of system time per fit, before the
    buffers were shared by the pilot's solve and every batch). Views handed out by :meth:`take` alias earlier
    ones of the same name: a caller takes a name again only when the previous view is dead. One workspace may serve
    consecutive fits (the layers of a run: what one layer faulted in, the next reuses), never two at once.
    """

    def __init__(self) -> None:
        self.free_rows: list[torch.Tensor] = []  # row buffers of finished sets
        self._flat: dict[str, torch.Tensor] = {}

    def row_buffer(self, numel: int, capacity: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A flat buffer of at least ``numel`` elements for one set's gathered rows: a finished set's, else fresh.

        On CPUs fresh ones get ``capacity`` elements (the largest set's; pages never written are never faulted
        in), so any of them serves a later, larger set; on GPUs the allocator would hold the whole size, so they
        get ``numel`` and too small ones are dropped.
        """
        while self.free_rows:
            cand = self.free_rows.pop()
            if cand.numel() >= numel and cand.dtype == dtype and cand.device == device:
                return cand
        return self._fresh(capacity if device.type == "cpu" else numel, dtype, device)

    @staticmethod
    def _fresh(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.empty(numel, dtype=dtype, device=device)

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised ``shape`` view of buffer ``name`` (grown when too small)."""
        numel = math.prod(shape)
        buf = self._flat.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            self._flat.pop(name, None)  # release the old block before asking for the bigger one
            buf = self._fresh(numel, dtype, device)
            self._flat[name] = buf
        return buf[:numel].view(shape)


def _compact(t: torch.Tensor, kept: list[int]) -> torch.Tensor:
    """``t[kept]`` (``kept`` ascending) moved to the front of ``t`` in place: no fresh logit-sized block."""
    for new, old in enumerate(kept):
        if new != old:
            t[new].copy_(t[old])
    return t[: len(kept)]


# ----------------------------------------------------------------------------------------------------- inputs
def _width(dim: int) -> int:
    """Columns of the gathered rows: the features, the constant 1, zeros up to a multiple of 8."""
    return (dim + 1 + 7) // 8 * 8


@dataclass
class RowSets:
    """The distinct row sets of a fit, their rows in the compute precision, and each set's standardisation.

    ``data`` holds every row used by any set, globally standardised (``(x - centre) / spread``) and cast to the
    compute dtype; ``members[s]`` indexes into it. ``mean[s]`` / ``scale[s]`` (raw units, float32) are set ``s``'s
    own weighted mean and SD, the standardisation its probes are defined on.
    """

    data: torch.Tensor  # [U, width(D)] compute dtype; column D is the constant 1 (the bias's feature), then zeros
    dim: int  # D, the number of features
    centre: torch.Tensor  # [D] float32
    spread: torch.Tensor  # [D] float32
    members: list[torch.Tensor]  # per set: [n_s] long into data (rows with weight > 0, sorted)
    weights: list[torch.Tensor]  # per set: [n_s] float32, summing to 1
    labels: list[torch.Tensor]  # per set: [n_s] long
    mean: torch.Tensor  # [S, D] float32
    scale: torch.Tensor  # [S, D] float32

    def __len__(self) -> int:
        return len(self.members)

    def fold(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, c)`` [len(s), D] with ``z = a * x_std + c``: set ``s``'s standardisation in terms of ``data``."""
        a = self.spread / self.scale[s]
        c = (self.centre - self.mean[s]) / self.scale[s]
        return a, c


def row_sets(x: torch.Tensor, y: torch.Tensor, sets: Sequence[tuple[torch.Tensor, torch.Tensor]],
             dtype: torch.dtype, chunk_rows: int = 2048, workspace: Workspace | None = None) -> RowSets:
    """Gather the rows of ``sets`` (each ``(rows, weight)``; zero-weight rows dropped) once, standardised globally.

    The global centre and spread only need to put every feature on a similar scale before rounding (any rough
    estimate does; they come from at most ``chunk_rows`` rows). Each set's own weighted mean and SD, which define
    its probes' objective, are exact: accumulated from the float32 rows (membership products per chunk of rows,
    combined in float64) in the same single pass that writes the compute-precision copy (into ``workspace``'s
    ``"data"`` buffer when given).
    """
    dev = x.device
    kept = []
    for rows, w in sets:
        pos = w > 0
        r, wk = rows[pos], w[pos].to(torch.float32)
        order = torch.argsort(r)
        kept.append((r[order], wk[order] / wk.sum().clamp_min(1e-30)))
    S, D = len(kept), int(x.shape[1])
    union = torch.unique(torch.cat([r for r, _ in kept])) if kept else torch.zeros(0, dtype=torch.long, device=dev)
    U = int(union.numel())
    probe = x[union[:: max(1, U // 2048)][:2048]].to(torch.float32)
    var, mean = torch.var_mean(probe, 0) if U > 1 else (torch.ones(D, device=dev), probe.mean(0))
    centre, sd = mean.double(), var.double().sqrt()
    spread = torch.where(sd > 1e-6 * (1.0 + centre.abs()), sd, torch.ones_like(sd))
    c32, inv = centre.to(torch.float32), (1.0 / spread).to(torch.float32)
    members = [torch.searchsorted(union, r) for r, _ in kept]
    shape = (U, _width(D))  # rows padded to 16-byte multiples: faster gathers
    data = torch.empty(shape, dtype=dtype, device=dev) if workspace is None else \
        workspace.take("data", shape, dtype, dev)
    m1 = torch.zeros(S, D, dtype=torch.float64, device=dev)
    m2 = torch.zeros_like(m1)
    shift = -c32 * inv
    # two chunk-sized float32 buffers reused by every chunk: a fresh block per chunk is new memory from the OS each
    # time, and its page faults cost about as much as the arithmetic. Chunks of 2,048 rows: 0.46 s per call on the
    # part-1 benchmark against 0.63 s with 8,192 (the squares and the membership products stay nearer the core).
    # The float32 chunk carries the constant column and the zero padding, so each chunk of ``data`` is written by one
    # contiguous converting copy (strided fills of those columns across all rows of ``data`` cost 0.14 s per call)
    xc_buf = torch.zeros(min(U, chunk_rows), shape[1], device=dev)
    xc_buf[:, D] = 1.0
    sq_buf = torch.empty(min(U, chunk_rows), D, device=dev)
    for start in range(0, U, chunk_rows):
        stop = min(U, start + chunk_rows)
        lo_row, hi_row = int(union[start]), int(union[stop - 1])
        # a run of consecutive rows (the usual case: populations are unions of speakers): a view, no gather
        xr = x[lo_row:hi_row + 1] if hi_row - lo_row == stop - start - 1 else x[union[start:stop]]
        xc = torch.addcmul(shift, xr.to(torch.float32), inv, out=xc_buf[:stop - start, :D])
        data[start:stop] = xc_buf[:stop - start]
        member = torch.zeros(S, stop - start, device=dev)
        for i, (m, (_, wn)) in enumerate(zip(members, kept, strict=True)):
            lo, hi = torch.searchsorted(m, torch.tensor([start, stop], device=dev)).tolist()
            member[i].index_put_((m[lo:hi] - start,), wn[lo:hi], accumulate=True)  # repeated rows add up
        m1 += (member @ xc).double()
        m2 += (member @ torch.mul(xc, xc, out=sq_buf[:stop - start])).double()
    var = (m2 - m1 * m1).clamp_min(0.0)
    sd_s = torch.where(var.sqrt() > 1e-6, var.sqrt(), torch.ones_like(var))  # constant feature: leave it unscaled
    return RowSets(data=data, dim=D, centre=c32, spread=spread.to(torch.float32), members=members,
                   weights=[wn for _, wn in kept], labels=[y[r] for r, _ in kept],
                   mean=(centre + m1 * spread).to(torch.float32), scale=(sd_s * spread).to(torch.float32))


@dataclass
class FeatureBasis:
    """Eigendecomposition of the feature correlation, the ``Sigma`` factor of the preconditioner."""

    vectors: torch.Tensor  # [D, D] float32
    values: torch.Tensor  # [D] float32


def feature_basis(rs: RowSets, gen: torch.Generator, max_rows: int = 8192) -> FeatureBasis:
    """``Sigma`` from at most ``max_rows`` rows drawn (seeded) from all sets; eigenvalues floored at 1e-4 x max.

    The correlation only shapes the path (through ``H0``), never the optimum, so one estimate serves every problem
    of a fit and a subsample is enough.
    """
    U = rs.data.shape[0]
    dev = rs.data.device
    take = torch.randperm(U, generator=gen, device="cpu")[:max_rows].to(dev) if U > max_rows else \
        torch.arange(U, device=dev)
    z = rs.data[take, : rs.dim]
    if z.dtype != torch.float32:
        cov = (z.T @ z).to(torch.float32) / max(1, z.shape[0])  # low-precision product is enough for H0
    else:
        cov = z.T @ z / max(1, z.shape[0])
    cov = 0.5 * (cov + cov.T)
    vals, vecs = torch.linalg.eigh(cov)  # float32: a preconditioner needs no more
    vals = vals.to(torch.float32)
    vals = vals.clamp_min(1e-4 * float(vals.max().clamp_min(1e-12)))
    return FeatureBasis(vectors=vecs.to(torch.float32).contiguous(), values=vals)


# ----------------------------------------------------------------------------------------------------- problems
@dataclass
class LinearSolution:
    """Per problem: weights in its set's standardised coordinates and how the solve ended."""

    W: torch.Tensor  # [Q, C, D] float32 (class-major)
    b: torch.Tensor  # [Q, C]
    n_iter: torch.Tensor  # [Q] long
    converged: torch.Tensor  # [Q] bool
    grad_max: torch.Tensor  # [Q] float32: max |grad f| at the returned point
    objective: torch.Tensor  # [Q] float32


@dataclass
class _State:
    """The active problems of one batch (problem-major tensors; the problems of one row set are contiguous)."""

    pid: torch.Tensor  # [q] index of the problem in the caller's list
    slot: torch.Tensor  # [q] row set of the problem within the batch
    lam: torch.Tensor  # [q]
    present: torch.Tensor | None  # [q, C] bool, or None when every problem has every class
    y: torch.Tensor  # [q, n] labels of the problem's rows (padding: 0)
    w: torch.Tensor  # [q, n] row weights (padding: 0)
    W: torch.Tensor  # [q, C, D]
    b: torch.Tensor  # [q, C]
    gW: torch.Tensor
    gb: torch.Tensor
    f: torch.Tensor  # [q]
    L: torch.Tensor  # [q, C, n] float32 logits at (W, b)
    sW: torch.Tensor  # [q, m, C, D] curvature pairs (ring buffer)
    sb: torch.Tensor  # [q, m, C]
    yW: torch.Tensor
    yb: torch.Tensor
    rho: torch.Tensor  # [q, m] (0 = empty or rejected pair)
    a_vecs: torch.Tensor  # [q, C, C] eigenvectors of the class curvature A
    a_vals: torch.Tensor  # [q, C]
    n_iter: torch.Tensor  # [q]

    def keep(self, sel: torch.Tensor) -> list[int]:
        """Keep the problems where ``sel``; returns their former positions."""
        kept = torch.nonzero(sel).flatten().tolist()
        for name in self.__dataclass_fields__:
            v = getattr(self, name)
            if name == "L":  # the logits live in a workspace buffer: compacted in place
                self.L = _compact(v, kept)
            elif isinstance(v, torch.Tensor):
                setattr(self, name, v[sel])
        return kept


class _Batch:
    """Row sets solved together: their rows (a seeded random subsample first, zero rows padding to a common length
    ``n``, and a constant column so the bias rides in the same products) and what folds each set's
    standardisation."""

    def __init__(self, rs: RowSets, set_ids: list[int], gen: torch.Generator, ws: Workspace, capacity: int) -> None:
        self.rs = rs
        self.ws = ws
        dev = rs.data.device
        self.set_ids = torch.tensor(set_ids, dtype=torch.long, device=dev)
        sizes = [int(rs.members[s].numel()) for s in set_ids]
        self.n = n = max(sizes)
        # line-search subsample: 1/_SUB_SHRINK of the rows (at least _SUB_MIN) when the sets have >= 16,384 rows
        self.n_sub = max(min(sizes) // _SUB_SHRINK, _SUB_MIN) if min(sizes) >= 16384 else 0
        self.dtype = rs.data.dtype
        self.width = W = int(rs.data.shape[1])
        self.z: list[torch.Tensor] = []  # per set: [n, width], a view of a buffer from ``pool``
        self.buffers: list[torch.Tensor | None] = []
        self.w = torch.zeros(len(set_ids), n, device=dev)
        self.y = torch.zeros(len(set_ids), n, dtype=torch.long, device=dev)
        for j, s in enumerate(set_ids):
            m = rs.members[s]
            k = int(m.numel())
            # a seeded random subsample of n_sub rows first (the line search's and the class curvature's subsample
            # is that prefix of the columns), then the rest; each part in source order, so the gather reads memory
            # almost sequentially (2-3x faster than a fully random order)
            pick = torch.zeros(k, dtype=torch.bool)
            pick[torch.randperm(k, generator=gen)[: self.n_sub]] = True
            order = torch.cat([torch.nonzero(pick).flatten(), torch.nonzero(~pick).flatten()]).to(dev)
            buf = ws.row_buffer(n * W, capacity * W, self.dtype, dev)
            z = buf[: n * W].view(n, W)
            torch.index_select(rs.data, 0, m[order], out=z[:k])
            z[k:] = 0.0
            self.z.append(z)
            self.buffers.append(buf)
            self.w[j, :k] = rs.weights[s][order]
            self.y[j, :k] = rs.labels[s][order]
        self.a, self.c = rs.fold(self.set_ids)  # [sets, D]
        self.wmax = self.w.amax(1)  # residuals are stored divided by this (float16 range)

    def release(self, j: int) -> None:
        """Return set ``j``'s rows to the pool (the set has no problems left)."""
        buf = self.buffers[j]
        if buf is not None:
            self.z[j] = self.z[j][:0]
            self.buffers[j] = None
            self.ws.free_rows.append(buf)

    def runs(self, slot: torch.Tensor) -> list[tuple[int, int, int]]:
        """``(set, q0, q1)``: the contiguous problem range of each row set that still has problems."""
        out, s = [], slot.tolist()
        q0 = 0
        for q in range(1, len(s) + 1):
            if q == len(s) or s[q] != s[q0]:
                out.append((s[q0], q0, q))
                q0 = q
        return out

    def to_data(self, dW: torch.Tensor, db: torch.Tensor, slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                     torch.Tensor]:
        """A direction in the problems' own coordinates as it acts on the gathered rows.

        Returns ``(d, dW', db', s)``: ``d`` [q, C, width] in the compute dtype (column D: the bias), the
        direction ``(dW', db')`` that ``d`` represents exactly after rounding (``s`` times the input direction), to
        be applied to the parameters so the cached logits stay the logits of the parameters, and ``s`` [q].
        """
        a, c = self.a[slot], self.c[slot]
        D = self.rs.dim
        d = torch.zeros(dW.shape[0], dW.shape[1], self.width, device=dW.device)
        d[..., :D] = dW * a[:, None, :]
        d[..., D] = db + (dW * c[:, None, :]).sum(-1)
        # scaled to max |d| = 1 before rounding (float16 would lose small directions to its subnormal range); the
        # line search finds the step for the scaled direction, so the scale needs no undoing
        scale = 1.0 / d.abs().amax((1, 2)).clamp_min(1e-30)
        d = (d * scale[:, None, None]).to(self.dtype)
        dWr = d[..., :D].to(torch.float32) / a[:, None, :]
        dbr = d[..., D].to(torch.float32) - (dWr * c[:, None, :]).sum(-1)
        return d, dWr, dbr, scale

    def forward(self, d: torch.Tensor, slot: torch.Tensor, out: torch.Tensor | None = None,
                resid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``Z d`` [q, C, n] (class-major) of data-side directions ``d`` [q, C, width], written to ``out``
        when given: a buffer reused across iterations (a fresh block of this size is new memory from the OS every
        time, and its page faults cost about as much as the product's output), in its own dtype on CPUs (the
        copy-back converts, e.g. to float32), the compute dtype on GPUs and by default.

        With ``resid`` [q, C, n], also returns ``sum(resid * Z d)`` [q] (float32) without a pass of its own over
        both arrays: on CPUs, in bfloat16 the diagonal of one small product, otherwise summed from each
        cache-resident chunk of the copy-back.
        """
        q, C, D1 = d.shape
        if out is None:
            out = torch.empty(q, C, self.n, dtype=self.dtype, device=d.device)
        dots = None if resid is None else torch.zeros(q, device=d.device)
        for s, q0, q1 in self.runs(slot):
            dest = out[q0:q1].view(-1, self.n)
            if d.is_cuda:
                torch.mm(d[q0:q1].reshape(-1, D1), self.z[s].T, out=dest)
                if dots is not None:
                    dots[q0:q1] = (resid[q0:q1].to(torch.float32) * out[q0:q1]).sum((1, 2))
                continue
            # CPU: the product is ~30 % faster with the rows' axis first ([n, k]); a cache-sized transposed copy per
            # column chunk brings it back to class-major for the element-wise work
            tmp = self.ws.take("forward", (self.n, (q1 - q0) * C), self.dtype, d.device)
            torch.mm(self.z[s], d[q0:q1].reshape(-1, D1).T, out=tmp)
            rows = None if resid is None else resid[q0:q1].view(-1, self.n)
            # the per-class sums of rows * Z d: in bfloat16 the diagonal of one small product of the two bfloat16
            # arrays (float32 accumulation, each class's sum rounded once): ~0.5 ms against ~2.8 ms for converting
            # and multiplying chunk by chunk; float16 could overflow there, and float32 chunks need no conversion
            per_class = None
            if rows is not None and self.dtype == torch.bfloat16:
                per_class = torch.mm(rows, tmp).diagonal().to(torch.float32)
            elif rows is not None:
                per_class = torch.zeros(rows.shape[0], device=d.device)
            for c0 in range(0, self.n, _CHUNK):
                u = dest[:, c0:c0 + _CHUNK]
                u.copy_(tmp[c0:c0 + _CHUNK].T)
                if rows is not None and per_class is not None and self.dtype != torch.bfloat16:
                    per_class += (rows[:, c0:c0 + _CHUNK].to(torch.float32) * u).sum(1)
            if dots is not None and per_class is not None:
                dots[q0:q1] = per_class.view(q1 - q0, C).sum(1)
        return out, dots

    def gradient(self, R: torch.Tensor, st: _State) -> tuple[torch.Tensor, torch.Tensor]:
        """``grad f`` in each problem's coordinates from residuals ``R`` [q, C, n] (compute dtype), which hold
        ``w (P - Y) / max(w)`` (so float16 keeps them in its normal range)."""
        q, C, n = R.shape
        D1 = self.width
        G = torch.empty(q, C, D1, device=R.device)
        for s, q0, q1 in self.runs(st.slot):
            g = torch.mm(R[q0:q1].view(-1, n), self.z[s])
            if self.dtype == torch.float16 and not bool(torch.isfinite(g).all()):  # float16 range exceeded: redo
                g = R[q0:q1].view(-1, n).to(torch.float32) @ self.z[s].to(torch.float32)
            G[q0:q1] = g.view(q1 - q0, C, D1)
        G = G * self.wmax[st.slot][:, None, None]
        a, c = self.a[st.slot], self.c[st.slot]
        D = self.rs.dim
        gb = G[..., D]
        gW = G[..., :D] * a[:, None, :] + gb[..., None] * c[:, None, :] + st.lam[:, None, None] * st.W
        return gW, gb.contiguous()


def _blocks(q: int, cols: slice, C: int, pend: list[int], cuda: bool) -> list[tuple[slice, slice]]:
    """(problem slice, column slice) blocks for element-wise work.

    Small problems, and every problem on a GPU: one block (the caller gathers the pending problems first). Big
    problems on a CPU: the pending ones, one at a time, in column chunks that stay in cache.
    """
    n0, n1 = cols.start or 0, cols.stop
    if cuda or C * (n1 - n0) < _BIG:
        return [(slice(0, q), slice(n0, n1))]
    return [(slice(i, i + 1), slice(s, min(s + _CHUNK, n1))) for i in pend for s in range(n0, n1, _CHUNK)]


def _evaluate(L: torch.Tensor, U: torch.Tensor, alpha: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
              cols: slice, pend: list[int], *, curvature: bool, Lnew: torch.Tensor | None = None,
              R: torch.Tensor | None = None, A: torch.Tensor | None = None, a_cols: int = 0,
              r_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The data term of ``f`` along the line ``L + alpha U`` over columns ``cols``: ``(f, f', f'')`` [q].

    ``w`` [q, n] weights the columns (pass weights renormalised over a subsample to estimate the full terms).
    Optional outputs for the same point: the new logits ``Lnew``, the weighted residuals ``R = w (P - Y) r_scale``
    in ``R``'s dtype, and the class curvature ``A = sum_i w_i (diag p_i - p_i p_i^T)`` (estimated from the first
    ``a_cols`` columns, a random subsample, when ``a_cols`` > 0; overwritten for the evaluated problems). Entries of
    problems not evaluated (not in ``pend``) are zero.
    """
    q, C, n_all = L.shape
    if len(pend) < q and (L.is_cuda or C * n_all < _BIG):  # one block of the pending problems only: gather them
        ix = torch.tensor(pend, device=L.device)
        sub = [None if t is None else t[ix] for t in (Lnew, R, A)]
        fs, d1s, d2s = _evaluate(L[ix], U[ix], alpha[ix], y[ix], w[ix], cols, list(range(len(pend))),
                                 curvature=curvature, Lnew=sub[0], R=sub[1], A=sub[2], a_cols=a_cols,
                                 r_scale=None if r_scale is None else r_scale[ix])
        for full, part in zip((Lnew, R, A), sub, strict=True):
            if full is not None:
                full[ix] = part
        out = [torch.zeros(q, device=L.device) for _ in range(3)]
        for o, v in zip(out, (fs, d1s, d2s), strict=True):
            o[ix] = v
        return out[0], out[1], out[2]
    f = torch.zeros(q, device=L.device)
    d1 = torch.zeros_like(f)
    d2 = torch.zeros_like(f)
    mass = torch.zeros_like(f)
    if A is not None:
        A[pend] = 0.0
    for ps, cs in _blocks(q, cols, C, pend, L.is_cuda):
        Uc = U[ps, :, cs].to(torch.float32)  # a view on CPUs (U is float32); mixed-dtype ops run ~2x slower
        La = torch.addcmul(L[ps, :, cs], Uc, alpha[ps, None, None], out=None if Lnew is None else Lnew[ps, :, cs])
        mx = La.amax(1, keepdim=True)
        yc = y[ps, None, cs]
        wc = w[ps, cs]
        ly = La.gather(1, yc)
        E = torch.sub(La, mx).exp_()
        tot = E.sum(1, keepdim=True)
        f[ps] += ((tot.log() + mx - ly).squeeze(1) * wc).sum(1)
        if A is not None and (a_cols <= 0 or cs.start < a_cols):
            pw = E * (wc[:, None, :] / tot)
            A[ps] += torch.diag_embed(pw.sum(-1)) - pw @ (E / tot).transpose(1, 2)
            mass[ps] += wc.sum(1)
        if R is None or curvature:
            eu = E * Uc
            spu = eu.sum(1, keepdim=True).div_(tot)  # sum_c p_c u_c
            d1[ps] += ((spu.squeeze(1) - Uc.gather(1, yc).squeeze(1)) * wc).sum(1)
            if curvature:
                d2[ps] += ((eu.mul_(Uc).sum(1, keepdim=True).div_(tot) - spu * spu).squeeze(1) * wc).sum(1)
        if R is not None:
            ws = wc if r_scale is None else wc * r_scale[ps, None]
            E.mul_(ws[:, None, :] / tot)  # w p (scaled)
            E.scatter_add_(1, yc, -ws[:, None, :])  # minus w y, in float32 (keeps 1 - p_y exact)
            R[ps, :, cs] = E
            if not curvature:  # f' = sum R U, multiplied in place (no chunk-sized temporary: 240 -> 190 ms per fit)
                d1[ps] += E.mul_(Uc).sum((1, 2)) / (1.0 if r_scale is None else r_scale[ps])
    if A is not None:
        ix = torch.tensor(pend, device=L.device)
        A[ix] /= mass[ix].clamp_min(1e-30)[:, None, None]
    return f, d1, d2


def _class_eig(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    vals, vecs = torch.linalg.eigh(A.double())
    return vecs.to(torch.float32), vals.clamp_min(0.0).to(torch.float32)


def _precondition(st: _State, basis: FeatureBasis, gW: torch.Tensor, gb: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    """``H0 g``: ``(A (x) Sigma + lambda I)^-1`` on the weights, ``(A + eps I)^-1`` on the bias (eigen-bases)."""
    q, C, D = gW.shape
    Qa, ea = st.a_vecs, st.a_vals
    t = (Qa.transpose(1, 2) @ gW).reshape(q * C, D) @ basis.vectors
    den = ea[:, :, None] * basis.values[None, None, :] + st.lam[:, None, None]
    t = t.view(q, C, D) / den.clamp_min(1e-8 * float(basis.values.max()) * ea.amax(1)[:, None, None] + 1e-30)
    rW = Qa @ (t.reshape(q * C, D) @ basis.vectors.T).view(q, C, D)
    # bias: A is singular along "all logits + const" (no effect on f); a small ridge keeps that direction inert
    eps = 1e-3 * ea.mean(1, keepdim=True) + 1e-12
    rb = (Qa @ ((Qa.transpose(1, 2) @ gb[..., None]).squeeze(-1) / (ea + eps))[..., None]).squeeze(-1)
    if st.present is not None:
        rW = rW * st.present[:, :, None]
        rb = rb * st.present
    return rW, rb


def _direction(st: _State, basis: FeatureBasis, ring: int, used: int) -> tuple[torch.Tensor, torch.Tensor]:
    """L-BFGS two-loop recursion (batched over problems) with the Kronecker ``H0``; returns ``-H g``."""
    qW, qb = st.gW.clone(), st.gb.clone()
    m = st.rho.shape[1]
    order = [(ring - 1 - k) % m for k in range(used)]  # newest first
    alphas = []
    for j in order:
        a = st.rho[:, j] * ((st.sW[:, j] * qW).sum((1, 2)) + (st.sb[:, j] * qb).sum(1))
        alphas.append(a)
        qW -= a[:, None, None] * st.yW[:, j]
        qb -= a[:, None] * st.yb[:, j]
    rW, rb = _precondition(st, basis, qW, qb)
    for j, a in zip(reversed(order), reversed(alphas), strict=True):
        beta = st.rho[:, j] * ((st.yW[:, j] * rW).sum((1, 2)) + (st.yb[:, j] * rb).sum(1))
        rW += (a - beta)[:, None, None] * st.sW[:, j]
        rb += (a - beta)[:, None] * st.sb[:, j]
    return -rW, -rb


def _line_search(st: _State, bt: _Batch, U: torch.Tensor, dW: torch.Tensor, d0: torch.Tensor, alpha0: torch.Tensor,
                 Lnew: torch.Tensor, R: torch.Tensor, A: torch.Tensor | None,
                 rounds: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-problem step length along a direction whose logit change ``U`` is cached.

    ``phi(alpha) = f(W + alpha d)`` is convex, so Newton's method on ``phi'`` (safeguarded by a bracket) finds the
    exact step. For big problems the Newton steps run on a random 1/32 of the rows (the data term re-weighted),
    and the full rows are evaluated once at the estimate; that evaluation also writes the new logits (``Lnew``),
    the weighted residuals (``R``) and the class curvature (``A``). A step is accepted when
    ``phi(alpha) <= phi(0) + 1e-4 alpha phi'(0)`` and ``|phi'(alpha)| <= 0.1 |phi'(0)|``.

    Newton starts at ``alpha0`` (the quasi-Newton step). Returns ``(alpha, phi(alpha), stalled)``; a stalled
    problem (no step decreases ``f`` beyond rounding) stays put.
    """
    q, _, n = U.shape
    dev = U.device
    lam = st.lam
    r_scale = 1.0 / bt.wmax[st.slot]
    wd, dd = (st.W * dW).sum((1, 2)), (dW * dW).sum((1, 2))
    ww = (st.W * st.W).sum((1, 2))
    alpha = alpha0.clone()
    curv = torch.zeros(q, device=dev)  # phi'' estimate for corrections
    if bt.n_sub:
        ws = st.w[:, : bt.n_sub]
        ws = ws / ws.sum(1, keepdim=True).clamp_min(1e-30)
        lo, hi = torch.zeros(q, device=dev), torch.full((q,), math.inf, device=dev)
        pend = list(range(q))
        # control variate: phi'(alpha) ~ phi'(0) (exact: full rows) + the subsample's change of phi' from 0 to
        # alpha. Near the optimum the subsample's own phi' carries sampling noise as large as phi'(0) itself, so
        # Newton on it lands where the full test fails (2.0 full evaluations per iteration); its change along the
        # line has no such noise (the same rows at both ends): 1.0 full evaluations per iteration
        _, base, _ = _evaluate(st.L, U, torch.zeros_like(alpha), st.y, ws, slice(0, bt.n_sub), pend,
                               curvature=False)
        for _ in range(6):
            _, d1, d2 = _evaluate(st.L, U, alpha, st.y, ws, slice(0, bt.n_sub), pend, curvature=True)
            g = d0 + (d1 - base) + lam * alpha * dd
            h = (d2 + lam * dd).clamp_min(1e-30)
            ix = torch.tensor(pend, device=dev)
            curv[ix] = h[ix]
            ok = g.abs() <= 0.02 * d0.abs()  # tighter than the full test: usually one full evaluation suffices
            todo = [i for i in pend if not bool(ok[i])]
            if not todo:
                break
            ix = torch.tensor(todo, device=dev)
            a, gi, hi_ = alpha[ix], g[ix], h[ix]
            hi[ix] = torch.where(gi > 0, a, hi[ix])
            lo[ix] = torch.where(gi > 0, lo[ix], a)
            nxt = a - gi / hi_
            inside = (nxt > lo[ix]) & (nxt < hi[ix])
            alpha[ix] = torch.where(inside, nxt, torch.where(torch.isinf(hi[ix]), 4 * a, 0.5 * (lo[ix] + hi[ix])))
            pend = todo
    lo, hi = torch.zeros(q, device=dev), torch.full((q,), math.inf, device=dev)
    out_a = torch.zeros(q, device=dev)
    out_f = st.f.clone()
    slack = 1e-6 * st.f.abs() + 1e-12  # float32 sums over many rows: never reject a step for rounding alone
    pend = list(range(q))
    for r in range(rounds):
        f, d1, _ = _evaluate(st.L, U, alpha, st.y, st.w, slice(0, n), pend, curvature=False, Lnew=Lnew,
                             R=R, A=A, a_cols=bt.n_sub, r_scale=r_scale)
        phi = f + 0.5 * lam * (ww + 2 * alpha * wd + alpha * alpha * dd)
        g = d1 + lam * (wd + alpha * dd)
        # secant through phi'(0) and phi'(alpha) on the full rows: exact for a quadratic
        sec = (g - d0) / alpha.clamp_min(1e-30)
        curv = torch.where(sec > 0, sec, curv.clamp_min(1e-30))
        armijo = phi <= st.f + 1e-4 * alpha * d0 + slack
        ok = armijo if r == rounds - 1 else armijo & (g.abs() <= _C2 * d0.abs())
        ix = torch.tensor(pend, device=dev)
        acc = ix[ok[ix]]
        out_a[acc], out_f[acc] = alpha[acc], phi[acc]
        todo = [i for i in pend if not bool(ok[i])]
        pend = todo
        if not todo or r == rounds - 1:
            break
        ix = torch.tensor(todo, device=dev)
        a, gi, hi_ = alpha[ix], g[ix], curv[ix]
        far = (~armijo[ix]) | (gi > 0)
        hi[ix] = torch.where(far, a, hi[ix])
        lo[ix] = torch.where(far, lo[ix], a)
        nxt = a - gi / hi_
        inside = (nxt > lo[ix]) & (nxt < hi[ix])
        alpha[ix] = torch.where(inside, nxt, torch.where(torch.isinf(hi[ix]), 4 * a, 0.5 * (lo[ix] + hi[ix])))
    stalled = torch.zeros(q, dtype=torch.bool, device=dev)
    if pend:  # rounding-level progress only: stay (alpha = 0) and restore the buffers at the current point
        ix = torch.tensor(pend, device=dev)
        stalled[ix] = True
        alpha[ix] = 0.0
        _evaluate(st.L, U, alpha, st.y, st.w, slice(0, n), pend, curvature=False, Lnew=Lnew, R=R, A=A,
                  a_cols=bt.n_sub, r_scale=r_scale)
    return out_a, out_f, stalled


def solve_linear(rs: RowSets, prob_set: torch.Tensor, lam: torch.Tensor, present: torch.Tensor,
                 basis: FeatureBasis, *, tol: float, max_iter: int, history: int, batch_bytes: int,
                 gen: torch.Generator, init: tuple[torch.Tensor, torch.Tensor] | None = None,
                 workspace: Workspace | None = None) -> LinearSolution:
    """Solve problems ``q`` (row set ``prob_set[q]``, strength ``lam[q]``, classes ``present[q]``) independently.

    ``init``: optional start ``(W [Q, C, D], b [Q, C])`` in each set's standardised coordinates (default: ``W = 0``,
    ``b`` = log class frequencies). Row sets are solved in batches of similar size whose working memory stays
    under ``batch_bytes``; ``gen`` orders the rows (the line search's subsample). ``workspace``: buffers to reuse
    (pass the same one to every call of a fit; default: a fresh one).
    """
    Q, C = present.shape
    D = rs.dim
    dev = rs.data.device
    res = LinearSolution(W=torch.zeros(Q, C, D, device=dev), b=torch.zeros(Q, C, device=dev),
                         n_iter=torch.zeros(Q, dtype=torch.long, device=dev),
                         converged=torch.zeros(Q, dtype=torch.bool, device=dev),
                         grad_max=torch.full((Q,), math.inf, device=dev), objective=torch.zeros(Q, device=dev))
    if Q == 0:
        return res
    itemsize = rs.data.element_size()
    per_set: dict[int, list[int]] = {}
    for q, s in enumerate(prob_set.tolist()):
        per_set.setdefault(int(s), []).append(q)
    order = sorted(per_set, key=lambda s: int(rs.members[s].numel()))
    batches: list[list[int]] = []
    cur: list[int] = []
    cost = 0
    for s in order:
        n = int(rs.members[s].numel())
        small = C * n < _BIG  # small problems keep full-size temporaries
        per_problem = C * n * (2 * 4 + 2 * itemsize + (4 * 4 if small else 0)) + 4 * history * C * D * 4
        c = n * _width(D) * itemsize + len(per_set[s]) * per_problem
        too_long = bool(cur) and n > 1.25 * int(rs.members[cur[0]].numel())  # bounded padding
        if cur and (cost + c > batch_bytes or too_long):
            batches.append(cur)
            cur, cost = [], 0
        cur.append(s)
        cost += c
    if cur:
        batches.append(cur)
    ws = Workspace() if workspace is None else workspace
    capacity = max(int(rs.members[s].numel()) for s in per_set)
    for sets in batches:
        bt = _Batch(rs, sets, gen, ws, capacity)
        _solve_batch(bt, per_set, lam, present, basis, res, tol=tol, max_iter=max_iter, history=history, init=init)
        for j in range(len(sets)):
            bt.release(j)
    return res


def _solve_batch(bt: _Batch, per_set: dict[int, list[int]], lam: torch.Tensor, present: torch.Tensor,
                 basis: FeatureBasis, res: LinearSolution, *, tol: float, max_iter: int, history: int,
                 init: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    rs = bt.rs
    dev = rs.data.device
    sets = bt.set_ids.tolist()
    pid = torch.tensor([q for s in sets for q in per_set[s]], dtype=torch.long, device=dev)
    slot = torch.tensor([j for j, s in enumerate(sets) for _ in per_set[s]], dtype=torch.long, device=dev)
    q = int(pid.numel())
    C, D, n = present.shape[1], rs.dim, bt.n
    pres = present[pid]
    all_present = bool(pres.all())
    y, w = bt.y[slot], bt.w[slot]
    if init is None:
        W = torch.zeros(q, C, D, device=dev)
        freq = torch.zeros(q, C, device=dev).scatter_add_(1, y, w)
        b = torch.log(freq.clamp_min(1e-12))  # start at the class frequencies
    else:
        W, b = init[0][pid].clone(), init[1][pid].clone()
    if not all_present:
        W = W * pres[:, :, None]
        b = torch.where(pres, b, torch.zeros_like(b))
    ws = bt.ws
    # the logit-sized buffers come from the fit's workspace (L and Lnew trade places every iteration)
    L = ws.take("L", (q, C, n), torch.float32, dev)
    Lnew = ws.take("Lnew", (q, C, n), torch.float32, dev)
    # the logit change, reused every iteration; float32 on CPUs, where the forward's copy-back converts it once
    # instead of every element-wise pass converting each chunk again
    U_buf = ws.take("U", (q, C, n), bt.dtype if dev.type == "cuda" else torch.float32, dev)
    R = ws.take("R", (q, C, n), bt.dtype, dev)
    if init is None:
        L.copy_(b[:, :, None].expand(q, C, n))
    else:
        d, W, b, scale = bt.to_data(W, b, slot)
        L.copy_(bt.forward(d, slot, out=U_buf)[0]).div_(scale[:, None, None])
        W, b = W / scale[:, None, None], b / scale[:, None]
    if not all_present:
        L.masked_fill_(~pres[:, :, None], -math.inf)  # classes a probe never saw get probability 0
    m = history
    st = _State(pid=pid, slot=slot, lam=lam[pid].to(torch.float32), present=None if all_present else pres, y=y, w=w,
                W=W, b=b, gW=torch.zeros_like(W), gb=torch.zeros_like(b), f=torch.zeros(q, device=dev), L=L,
                sW=torch.zeros(q, m, C, D, device=dev), sb=torch.zeros(q, m, C, device=dev),
                yW=torch.zeros(q, m, C, D, device=dev), yb=torch.zeros(q, m, C, device=dev),
                rho=torch.zeros(q, m, device=dev), a_vecs=torch.zeros(q, C, C, device=dev),
                a_vals=torch.zeros(q, C, device=dev), n_iter=torch.zeros(q, dtype=torch.long, device=dev))
    A = torch.zeros(q, C, C, device=dev)
    f, _, _ = _evaluate(st.L, U_buf.zero_(), torch.zeros(q, device=dev), y, w,
                        slice(0, n), list(range(q)), curvature=False, R=R, A=A, a_cols=bt.n_sub,
                        r_scale=1.0 / bt.wmax[slot])
    st.f = f + 0.5 * st.lam * (st.W * st.W).sum((1, 2))
    st.a_vecs, st.a_vals = _class_eig(A)
    st.gW, st.gb = bt.gradient(R, st)
    ring = used = it = 0
    stuck = torch.zeros(int(res.W.shape[0]), dtype=torch.bool, device=dev)
    while True:
        gmax = torch.maximum(st.gW.abs().amax((1, 2)), st.gb.abs().amax(1))
        done = (gmax <= tol) | (st.n_iter >= max_iter) | stuck[st.pid]
        if done.any():
            fin = st.pid[done]
            res.W[fin], res.b[fin] = st.W[done], st.b[done]
            res.n_iter[fin], res.converged[fin] = st.n_iter[done], gmax[done] <= tol
            res.grad_max[fin], res.objective[fin] = gmax[done], st.f[done]
            keep = ~done
            if not keep.any():
                return
            kept = st.keep(keep)
            Lnew, R, A = Lnew[: len(kept)], _compact(R, kept), A[keep]  # Lnew is rewritten before it is read
            for j in set(range(len(bt.z))) - set(st.slot.tolist()):
                bt.release(j)  # the rows of a finished set
        dW, db = _direction(st, basis, ring, used)
        d0 = (st.gW * dW).sum((1, 2)) + (st.gb * db).sum(1)
        bad = d0 >= 0  # not a descent direction (stale pairs): restart those problems from H0 alone
        if bad.any():
            st.rho[bad] = 0.0
            rW, rb = _precondition(st, basis, st.gW, st.gb)
            dW = torch.where(bad[:, None, None], -rW, dW)
            db = torch.where(bad[:, None], -rb, db)
        d, dW, db, scale = bt.to_data(dW, db, st.slot)
        U, RU = bt.forward(d, st.slot, out=U_buf[: d.shape[0]], resid=R)
        if st.present is not None:
            U.masked_fill_(~st.present[:, :, None], 0.0)  # (absent classes add nothing to RU: R is 0 there)
        # phi'(0) from the cached residuals and the rounded logit change: the line search then sees one consistent
        # function even where low-precision products make U differ slightly from the image of the direction (the
        # gradient's g . d drifts from it by up to ~20 % of phi'(0) near the optimum in bfloat16, enough to cost a
        # second full evaluation in most late line searches)
        d0 = RU * bt.wmax[st.slot] + st.lam * (st.W * dW).sum((1, 2))
        flat = d0 >= 0  # no descent left at this precision: counts as a stalled step
        it += 1
        refresh = it <= 2 or it % _REFRESH == 0  # the class curvature settles after the first steps
        alpha, f_new, stalled = _line_search(st, bt, U, dW, d0.clamp_max(-1e-30), 1.0 / scale, Lnew, R,
                                             A if refresh else None)
        stalled |= flat
        st.L, Lnew = Lnew, st.L
        sW, sb = alpha[:, None, None] * dW, alpha[:, None] * db
        st.W += sW
        st.b += sb
        st.f = f_new
        if refresh:
            st.a_vecs, st.a_vals = _class_eig(A)
        gW, gb = bt.gradient(R, st)
        yW, yb = gW - st.gW, gb - st.gb
        sy = (sW * yW).sum((1, 2)) + (sb * yb).sum(1)
        good = sy > 1e-10 * ((sW * sW).sum((1, 2)) + (sb * sb).sum(1)).sqrt() * \
            ((yW * yW).sum((1, 2)) + (yb * yb).sum(1)).sqrt()
        st.sW[:, ring], st.sb[:, ring], st.yW[:, ring], st.yb[:, ring] = sW, sb, yW, yb
        st.rho[:, ring] = torch.where(good, 1.0 / torch.where(good, sy, torch.ones_like(sy)), torch.zeros_like(sy))
        ring = (ring + 1) % m
        used = min(used + 1, m)
        st.gW, st.gb = gW, gb
        st.n_iter += 1
        if stalled.any():  # a step that cannot decrease f: forget the pairs; stop if H0 alone already failed
            stuck[st.pid[stalled & (st.rho == 0).all(1)]] = True
            st.rho[stalled] = 0.0


__all__ = ["PRECISIONS", "FeatureBasis", "LinearSolution", "RowSets", "compute_dtype", "feature_basis", "row_sets",
           "Workspace", "solve_linear", "thread_count", "torch_threads"]
