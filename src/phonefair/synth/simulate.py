"""Planted-truth phone-embedding simulator.

Generates phone-token embeddings from an explicit hierarchical model, so every estimator and test in phonefair can
be checked against a known truth. For token ``t`` of phone ``p`` said by speaker ``s`` of group ``g`` at layer ``l``::

    x_t = mu[l, p] + a_l * delta[g, p] + b_l * u[s, p] + c_l * e_t

    mu[l, p]   phone mean, N(0, phone_sep^2 I) per dimension                    (what a probe must separate)
    delta[g,p] group shift: a vector of norm ``shift_g`` in a random direction for the group's shifted phones,
               0 otherwise                                                      (systematic error)
    u[s, p]    speaker deviation, N(0, speaker_sd_g^2 I)                        (random error between speakers)
    e_t        token noise, N(0, noise_sd_g^2 I)                                (random error within a speaker)

``a_l, b_l, c_l`` are per-layer multipliers (``layer_shift``, ``layer_speaker``, ``layer_noise``), so layerwise
curves have a known shape. Standard deviations are *per dimension*: the expected squared norm of ``u`` is
``dim * speaker_sd^2``. The true squared shift of ``(g, p)`` against the unshifted groups is
``(a_l * shift_g)^2`` for shifted phones and 0 otherwise.

The simulator returns the embeddings in the layout of an extraction store (an
:class:`~phonefair.store.InMemoryEmbeddings` whose ``tokens`` table has ``recording_id, speaker, phone, split, group``)
plus the group assignment and the true parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from phonefair.store.base import InMemoryEmbeddings


@dataclass(frozen=True)
class GroupParams:
    """Parameters of one simulated speaker group."""

    n_speakers: int = 12
    shift: float = 0.0  # norm of delta[g, p] for the shifted phones
    shift_phones: float | Sequence[str] = 1.0  # fraction of phones shifted (first k, in phone order), or names
    speaker_sd: float = 0.5
    noise_sd: float = 1.0
    tokens_per_phone: int = 8  # mean tokens per (speaker, phone); Poisson-distributed, at least 1
    phone_weights: Sequence[float] | None = None  # relative phone frequencies (None: uniform)
    # "random": each shifted phone moves in its own random direction (its clusters drift apart: often *easier*
    # to classify); "towards": towards the nearest other phone's mean (an accent merger: harder to classify)
    shift_mode: str = "random"


@dataclass(frozen=True)
class Scenario:
    """A full simulation design: groups, phones, dimension, layers."""

    groups: Mapping[str, GroupParams]
    n_phones: int = 10
    dim: int = 16
    phone_sep: float = 1.5
    layers: Sequence[str] = ("0",)
    layer_shift: Sequence[float] | None = None
    layer_speaker: Sequence[float] | None = None
    layer_noise: Sequence[float] | None = None
    test_fraction: float = 0.3

    def with_group(self, name: str, **changes: Any) -> Scenario:
        """A copy with one group's parameters changed."""
        groups = dict(self.groups)
        groups[name] = replace(groups[name], **changes)
        return replace(self, groups=groups)


def _base(**kw: Any) -> dict[str, GroupParams]:
    return {g: GroupParams(**kw) for g in ("A", "B", "C")}


#: Named scenarios. Group "C" is the disadvantaged one wherever there is a difference.
PRESETS: dict[str, Scenario] = {
    "null": Scenario(groups=_base()),
    "shift": Scenario(groups={**_base(), "C": GroupParams(shift=1.5)}),
    "variance": Scenario(groups={**_base(), "C": GroupParams(speaker_sd=1.0, noise_sd=1.6)}),
    "both": Scenario(groups={**_base(), "C": GroupParams(shift=1.5, speaker_sd=1.0, noise_sd=1.6)}),
    "sparse_shift": Scenario(groups={**_base(), "C": GroupParams(shift=2.5, shift_phones=0.2)}),
    # confounds: groups identical in distribution, but one has fewer tokens / other phone frequencies
    "count_confound": Scenario(groups={**_base(), "C": GroupParams(tokens_per_phone=3)}),
    "frequency_confound": Scenario(groups={**_base(), "C": GroupParams(
        phone_weights=tuple(float(w) for w in np.linspace(3.0, 0.3, 10)))}),
}


@dataclass
class Truth:
    """The planted parameters."""

    scenario: Scenario
    phones: list[str]
    phone_means: np.ndarray  # [L, P, D]
    shift_vectors: np.ndarray  # [G, P, D] layer 0's (before the layer multiplier; same norms at every layer)
    group_names: list[str]

    def shift_table(self) -> pd.DataFrame:
        """True squared shift per (layer, group, phone) against the unshifted groups."""
        a = _layer_mult(self.scenario.layer_shift, len(self.scenario.layers))
        sq = (self.shift_vectors**2).sum(-1)  # [G, P]
        rows = [{"layer": layer, "group": g, "phone": p, "shift_sq": float(a[li] ** 2 * sq[gi, pi]),
                 "shifted": bool(sq[gi, pi] > 0)}
                for li, layer in enumerate(self.scenario.layers)
                for gi, g in enumerate(self.group_names) for pi, p in enumerate(self.phones)]
        return pd.DataFrame(rows)

    def variance_table(self) -> pd.DataFrame:
        """True per-dimension between-speaker and within-speaker variance per (layer, group)."""
        L = len(self.scenario.layers)
        b = _layer_mult(self.scenario.layer_speaker, L)
        c = _layer_mult(self.scenario.layer_noise, L)
        rows = [{"layer": layer, "group": g, "between_speaker_var": (b[li] * gp.speaker_sd) ** 2,
                 "within_speaker_var": (c[li] * gp.noise_sd) ** 2}
                for li, layer in enumerate(self.scenario.layers) for g, gp in self.scenario.groups.items()]
        return pd.DataFrame(rows)


@dataclass
class Simulation:
    """What :func:`simulate` returns."""

    embeddings: InMemoryEmbeddings
    groups: pd.Series  # speaker -> group
    speakers: pd.DataFrame
    truth: Truth
    seed: int

    @property
    def tokens(self) -> pd.DataFrame:
        return self.embeddings.tokens


def _layer_mult(values: Sequence[float] | None, n: int) -> np.ndarray:
    if values is None:
        return np.ones(n)
    v = np.asarray(values, dtype=float)
    if v.shape != (n,):
        raise ValueError(f"layer multipliers must have one value per layer ({n}), got {len(v)}")
    return v


PHONE_NAMES = ("aa", "iy", "uw", "eh", "s", "t", "n", "r", "k", "m", "ae", "ih", "ow", "f", "d", "l", "z", "p",
               "sh", "g", "b", "v", "ah", "er", "ey", "ay", "w", "y", "hh", "ng", "th", "dh", "ch", "jh", "uh",
               "aw", "oy", "dx", "sil")


def simulate(scenario: Scenario | str = "null", *, seed: int = 0, **overrides: Any) -> Simulation:
    """Draw one dataset from ``scenario`` (a :class:`Scenario` or a :data:`PRESETS` name).

    ``overrides`` replace top-level scenario fields (``dim=64``, ``layers=("0", "1")``, ...).
    """
    sc = PRESETS[scenario] if isinstance(scenario, str) else scenario
    if overrides:
        sc = replace(sc, **overrides)
    if sc.n_phones > len(PHONE_NAMES):
        raise ValueError(f"n_phones must be <= {len(PHONE_NAMES)}")
    rng = np.random.default_rng(seed)
    L, P, D = len(sc.layers), sc.n_phones, sc.dim
    phones = list(PHONE_NAMES[:P])
    group_names = list(sc.groups)
    a = _layer_mult(sc.layer_shift, L)
    b = _layer_mult(sc.layer_speaker, L)
    c = _layer_mult(sc.layer_noise, L)

    phone_means = rng.normal(0.0, sc.phone_sep, size=(L, P, D))
    # per layer: a "towards" shift follows each layer's own geometry (the layers' phone means are independent
    # draws, so layer 0's direction would be a random, *helpful* direction at the other layers)
    layer_shifts = np.zeros((L, len(group_names), P, D))
    for gi, g in enumerate(group_names):
        gp = sc.groups[g]
        if gp.shift == 0:
            continue
        if isinstance(gp.shift_phones, float | int):
            k = max(1, int(round(float(gp.shift_phones) * P)))
            shifted = list(range(k))
        else:
            shifted = [phones.index(p) for p in gp.shift_phones]
        if gp.shift_mode == "random":
            dirs = np.broadcast_to(rng.normal(size=(len(shifted), D)), (L, len(shifted), D)).copy()
        elif gp.shift_mode == "towards":  # each layer's nearest other phone
            dirs = np.empty((L, len(shifted), D))
            for li in range(L):
                mu = phone_means[li]
                d2 = ((mu[:, None, :] - mu[None, :, :]) ** 2).sum(-1)
                np.fill_diagonal(d2, np.inf)
                dirs[li] = mu[np.argmin(d2[shifted], axis=1)] - mu[shifted]
        else:
            raise ValueError(f"group {g!r}: shift_mode must be 'random' or 'towards', got {gp.shift_mode!r}")
        dirs /= np.linalg.norm(dirs, axis=2, keepdims=True)
        layer_shifts[:, gi, shifted] = gp.shift * dirs
    shift_vectors = layer_shifts[0]

    token_frames, arrays = [], [[] for _ in range(L)]
    speaker_rows = []
    for gi, g in enumerate(group_names):
        gp = sc.groups[g]
        w = np.ones(P) if gp.phone_weights is None else np.asarray(gp.phone_weights, dtype=float)
        if w.shape != (P,):
            raise ValueError(f"group {g!r}: phone_weights needs {P} values, got {len(w)}")
        w = w / w.mean()
        for si in range(gp.n_speakers):
            spk = f"{g}_s{si:02d}"
            speaker_rows.append({"speaker": spk, "group": g, "speaker_sd": gp.speaker_sd, "noise_sd": gp.noise_sd,
                                 "shift": gp.shift})
            counts = np.maximum(1, rng.poisson(gp.tokens_per_phone * w))
            phone_idx = np.repeat(np.arange(P), counts)
            n = len(phone_idx)
            u = rng.normal(0.0, gp.speaker_sd, size=(P, D))
            e = rng.normal(0.0, gp.noise_sd, size=(n, D))
            for li in range(L):
                x = phone_means[li, phone_idx] + a[li] * layer_shifts[li, gi, phone_idx] + b[li] * u[phone_idx] \
                    + c[li] * e
                arrays[li].append(x.astype(np.float32))
            token_frames.append(pd.DataFrame({"recording_id": f"{spk}_rec", "speaker": spk,
                                              "phone": [phones[i] for i in phone_idx], "group": g}))

    tokens = pd.concat(token_frames, ignore_index=True)
    speakers = pd.DataFrame(speaker_rows)
    groups = pd.Series(speakers["group"].to_numpy(), index=speakers["speaker"].to_numpy(), name="group")
    # speaker-disjoint split, stratified by group
    split_rng = np.random.default_rng(seed + 1)
    split = {}
    for g in group_names:
        spk = speakers.loc[speakers["group"] == g, "speaker"].to_numpy()
        n_test = max(1, int(round(sc.test_fraction * len(spk))))
        test = set(split_rng.permutation(spk)[:n_test])
        split.update({s: ("test" if s in test else "train") for s in spk})
    tokens["split"] = tokens["speaker"].map(split)
    speakers["split"] = speakers["speaker"].map(split)
    truth = Truth(scenario=sc, phones=phones, phone_means=phone_means, shift_vectors=shift_vectors,
                  group_names=group_names)
    emb = InMemoryEmbeddings(
        tokens, {layer: np.concatenate(arrays[li]) for li, layer in enumerate(sc.layers)},
        provenance={"source": "phonefair.synth.simulate", "seed": seed,
                    "scenario": scenario if isinstance(scenario, str) else "custom"},
    )
    return Simulation(embeddings=emb, groups=groups, speakers=speakers, truth=truth, seed=seed)


__all__ = ["PRESETS", "GroupParams", "Scenario", "Simulation", "Truth", "simulate"]
