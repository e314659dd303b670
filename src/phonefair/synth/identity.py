"""Planted-truth embeddings for the identity lenses: group and speaker identity in known dimensions, per layer.

:func:`phonefair.synth.simulate` plants *phone-specific* group shifts and speaker deviations (what the typology
needs). The identity lenses ask where group and speaker identity that is *common to a speaker's phones* lives, so
this generator plants exactly that. Token ``t`` of phone ``p`` by speaker ``s`` of group ``g`` in recording ``r``, at
layer ``l``::

    x_t = mu[p] + a_l * m[g] + b_l * v[s] + e_t

    mu[p]   phone mean, N(0, phone_sep^2) per dimension (the same at every layer)
    m[g]    group offset: non-zero only on ``group_dims``, a random direction there of norm ``group_norm[g]``
    v[s]    speaker offset, N(0, speaker_sd[g]^2) per dimension (all dimensions)
    e_t     token noise, N(0, noise_sd^2) per dimension

``a_l`` (``layer_group``) and ``b_l`` (``layer_speaker``) shape the layerwise curves. ``realised_differently``
names a group whose phones have their means along the group dimensions permuted among phones (a cyclic shift): that
group realises its phones differently exactly where group identity lives, so a phone probe trained on all groups
serves it worse, and projecting the group directions out should close the gap (a planted gap with a known
location). Tokens are dealt round-robin to ``recordings`` recordings per speaker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from phonefair.errors import ConfigError
from phonefair.store.base import InMemoryEmbeddings

__all__ = ["IdentitySimulation", "simulate_identity"]

PHONES = ("aa", "iy", "uw", "eh", "s", "t", "n", "r", "k", "m", "ae", "ih", "ow", "f", "d", "l", "z", "p", "sh",
          "g", "b", "v", "ah", "er", "ey", "ay", "w", "y", "hh", "ng", "th", "dh", "ch", "jh", "uh", "aw", "oy")


def _per_group(value: float | Sequence[float], n_groups: int, name: str) -> np.ndarray:
    v = np.full(n_groups, float(value)) if np.isscalar(value) else np.asarray(value, dtype=float)
    if v.shape != (n_groups,):
        raise ConfigError(f"{name} needs one value or one per group ({n_groups}), got {value!r}")
    return v


@dataclass
class IdentitySimulation:
    """What :func:`simulate_identity` returns: an embedding source, speaker -> group, and the planted truth."""

    embeddings: InMemoryEmbeddings
    groups: pd.Series
    group_dims: list[int]
    group_offsets: np.ndarray  # [G, D]
    speaker_offsets: pd.DataFrame  # speaker x dimension
    seed: int


def simulate_identity(*, n_groups: int = 4, speakers_per_group: int = 12, n_phones: int = 20, dim: int = 32,
                      layers: Sequence[str] = ("0", "1", "2"), group_dims: Sequence[int] = (0, 1, 2),
                      group_norm: float | Sequence[float] = 1.0, layer_group: Sequence[float] | None = None,
                      speaker_sd: float | Sequence[float] = 0.5, layer_speaker: Sequence[float] | None = None,
                      noise_sd: float = 1.0, phone_sep: float = 1.5, tokens_per_phone: int = 6,
                      recordings: int = 4, realised_differently: int | None = None,
                      seed: int = 0) -> IdentitySimulation:
    """Draw one dataset (see the module docstring). ``group_norm`` and ``speaker_sd`` may be one value per group."""
    L = len(layers)
    if n_phones > len(PHONES):
        raise ConfigError(f"n_phones must be <= {len(PHONES)}, got {n_phones}")
    if any(not 0 <= d < dim for d in group_dims):
        raise ConfigError(f"group_dims {list(group_dims)} must lie in [0, {dim})")
    a = np.ones(L) if layer_group is None else np.asarray(layer_group, dtype=float)
    b = np.ones(L) if layer_speaker is None else np.asarray(layer_speaker, dtype=float)
    if a.shape != (L,) or b.shape != (L,):
        raise ConfigError(f"layer_group / layer_speaker need one value per layer ({L})")
    sd, norm = _per_group(speaker_sd, n_groups, "speaker_sd"), _per_group(group_norm, n_groups, "group_norm")
    rng = np.random.default_rng(seed)
    mu = rng.normal(0.0, phone_sep, size=(n_phones, dim))
    m = np.zeros((n_groups, dim))
    gd = list(group_dims)
    if gd:
        raw = rng.normal(size=(n_groups, len(gd)))
        m[:, gd] = norm[:, None] * raw / np.linalg.norm(raw, axis=1, keepdims=True).clip(min=1e-12)
    group_names = [chr(ord("A") + i) for i in range(n_groups)]
    frames, xs, spk_rows = [], [[] for _ in range(L)], {}
    for g in range(n_groups):
        for i in range(speakers_per_group):
            spk = f"{group_names[g]}_s{i:02d}"
            v = rng.normal(0.0, sd[g], size=dim)
            spk_rows[spk] = v
            phone_idx = np.repeat(np.arange(n_phones), max(1, tokens_per_phone))
            rng.shuffle(phone_idx)
            n = len(phone_idx)
            e = rng.normal(0.0, noise_sd, size=(n, dim))
            base = mu[phone_idx].copy()
            if realised_differently == g and gd:
                base[:, gd] = mu[(phone_idx + 1) % n_phones][:, gd]
            for li in range(L):
                xs[li].append((base + a[li] * m[g] + b[li] * v + e).astype(np.float32))
            frames.append(pd.DataFrame({
                "recording_id": [f"{spk}_r{j % recordings}" for j in range(n)], "speaker": spk,
                "phone": [PHONES[k] for k in phone_idx], "group": group_names[g]}))
    tokens = pd.concat(frames, ignore_index=True)
    groups = tokens.drop_duplicates("speaker").set_index("speaker")["group"].rename("group")
    emb = InMemoryEmbeddings(tokens, {layer: np.concatenate(xs[li]) for li, layer in enumerate(layers)},
                             provenance={"source": "phonefair.synth.identity.simulate_identity", "seed": seed})
    return IdentitySimulation(embeddings=emb, groups=groups, group_dims=gd, group_offsets=m,
                              speaker_offsets=pd.DataFrame.from_dict(spk_rows, orient="index"), seed=seed)
