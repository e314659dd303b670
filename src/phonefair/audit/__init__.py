"""The :class:`Audit`: one object from embeddings + speaker groups to verdicts, tables, summary and report.

In the spirit of fairlearn's ``MetricFrame``: build it once from an embedding source (or several, one per encoder)
and a speaker → group mapping; the design is validated once; every view is computed on demand and kept::

    import phonefair as pf
    emb = pf.Embeddings.from_numpy({"6": X6, "12": X12}, speaker=speaker_ids, phone=phone_labels)
    audit = pf.Audit(emb, groups={"spk1": "L1", "spk2": "L2", ...})
    print(audit.summary_text())          # served worse? where? why? with intervals
    audit.verdicts()                     # one row per group (DataFrame)
    audit.report("out")                  # out/report.html + tables/

The pipeline (``phonefair run``) and the CLI use this same object.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from phonefair.audit.design import Design, GroupsLike
from phonefair.errors import ConfigError
from phonefair.settings import AnalysisSettings, ProbeSettings, coerce
from phonefair.store.base import EmbeddingSource

__all__ = ["Audit", "Design"]

STAGES = ("probes", "served", "typology", "identity")


class Audit:
    """Verdicts, tables, summary and report for one or several encoders' phone embeddings and speaker groups.

    Parameters
    ----------
    embeddings:
        An :class:`~phonefair.store.EmbeddingSource` (e.g. ``phonefair.Embeddings.from_numpy(...)`` or an extracted
        store), or a mapping ``{encoder name: source}`` to audit several encoders on the same speakers.
    groups:
        speaker → group: a ``pandas.Series``, a ``dict``, or ``(speaker_table, column)``.
    reference:
        A group to measure every other group against; ``None`` (default): each group against the others.
    min_speakers:
        Groups with fewer speakers are excluded (reported); 2 is the floor (a pilot design, with warnings).
    probes, analysis:
        :class:`~phonefair.settings.ProbeSettings` / :class:`~phonefair.settings.AnalysisSettings` or a mapping of
        their fields (the same settings, with the same defaults, as the TOML sections ``[probes]`` / ``[analysis]``).
    baseline:
        The name of an encoder in ``embeddings`` that is an acoustic baseline (its gaps are subtracted from the other
        encoders' to say whether they create, amplify, inherit or reduce a gap).
    lenses:
        :class:`~phonefair.probes.identity.IdentitySettings` (or a mapping of its fields) for the group- and
        speaker-identity lenses (:meth:`identity`).
    seed:
        Every random stream of the audit is derived from it (:mod:`phonefair.rng`).
    """

    def __init__(self, embeddings: EmbeddingSource | Mapping[str, EmbeddingSource], groups: GroupsLike, *,
                 reference: str | None = None, min_speakers: int = 5,
                 probes: ProbeSettings | Mapping[str, Any] | None = None,
                 analysis: AnalysisSettings | Mapping[str, Any] | None = None, baseline: str | None = None,
                 lenses: Any = None, seed: int = 0, progress: bool = False) -> None:
        self.sources: dict[str, EmbeddingSource] = (
            {str(k): v for k, v in embeddings.items()} if isinstance(embeddings, Mapping) else {"encoder": embeddings})
        if not self.sources:
            raise ConfigError("Audit: no embeddings given")
        if baseline is not None and baseline not in self.sources:
            raise ConfigError(f"Audit: baseline {baseline!r} is not one of the encoders {list(self.sources)}")
        self.probe_settings = coerce(ProbeSettings, probes)
        self.analysis_settings = coerce(AnalysisSettings, analysis)
        self.reference = reference
        self.baseline = baseline
        self.lens_settings = lenses
        self.seed = int(seed)
        self.progress = progress
        self.designs: dict[str, Design] = {
            name: Design.build(src, groups, reference=reference, min_speakers=min_speakers,
                               exclude_phones=self.probe_settings.exclude_phones, folds=self.probe_settings.folds,
                               repeats=self.probe_settings.repeats, seed=self.seed)
            for name, src in self.sources.items()}
        self._results: dict[tuple[str, str], Any] = {}

    # ------------------------------------------------------------------ stages
    @property
    def encoders(self) -> list[str]:
        return list(self.sources)

    def _encoder(self, encoder: str | None) -> str:
        if encoder is None:
            if len(self.sources) > 1:
                raise ConfigError(f"several encoders are audited ({self.encoders}); name one")
            return self.encoders[0]
        if encoder not in self.sources:
            raise ConfigError(f"no encoder {encoder!r}; audited: {self.encoders}")
        return encoder

    def design(self, encoder: str | None = None) -> Design:
        return self.designs[self._encoder(encoder)]

    def attach(self, encoder: str, stage: str, result: Any) -> None:
        """Use an already computed stage result (the pipeline's cache) instead of computing it."""
        if stage not in STAGES:
            raise ConfigError(f"unknown stage {stage!r}; stages: {STAGES}")
        self._results[(self._encoder(encoder), stage)] = result

    def has(self, encoder: str, stage: str) -> bool:
        return (encoder, stage) in self._results

    def probes(self, encoder: str | None = None) -> Any:
        """The cross-fitted probes' results (:class:`~phonefair.probes.ProbeResults`)."""
        enc = self._encoder(encoder)
        if (enc, "probes") not in self._results:
            from phonefair.probes import fit_probes

            a = self.analysis_settings
            self._results[(enc, "probes")] = fit_probes(
                self.sources[enc], self.designs[enc], self.probe_settings, level=a.level, fdr_alpha=a.fdr_alpha,
                seed=self.seed, progress=self.progress)
        return self._results[(enc, "probes")]

    def served(self, encoder: str | None = None) -> Any:
        """Served worse? (:class:`~phonefair.analysis.ServedWorse`): gaps, pairwise tests, decisions."""
        enc = self._encoder(encoder)
        if (enc, "served") not in self._results:
            from phonefair.analysis import served_worse

            a = self.analysis_settings
            self._results[(enc, "served")] = served_worse(
                self.probes(enc)["speaker_accuracy"], self.designs[enc], alpha=a.alpha, level=a.level,
                n_perm=a.n_perm, seed=self.seed)
        return self._results[(enc, "served")]

    def typology(self, encoder: str | None = None) -> Any:
        """Why? The random-vs-systematic typology and the mechanism tests (:class:`TypologyResults`)."""
        enc = self._encoder(encoder)
        if (enc, "typology") not in self._results:
            from phonefair.analysis import analyze

            probes = self.probes(enc)
            layers = probes.provenance.get("layers")
            self._results[(enc, "typology")] = analyze(
                self.sources[enc], self.designs[enc], self.analysis_settings, served=self.served(enc),
                speaker_accuracy=probes["speaker_accuracy"], layers=layers, seed=self.seed,
                progress=self.progress)
        return self._results[(enc, "typology")]

    def decisions(self, encoder: str | None = None) -> pd.DataFrame:
        """The final served-worse decisions per group: the pairwise attribution, read against the typology when a
        better-served group is the one that departs from the others (:func:`phonefair.analysis.verdict.attribute`)."""
        from phonefair.analysis.verdict import attribute

        enc = self._encoder(encoder)
        return attribute(self.served(enc), self.typology(enc), reference=self.reference)

    def phone_gaps(self, encoder: str | None = None) -> pd.DataFrame:
        """Where, phone by phone, each group served worse loses accuracy (at its peak layer)."""
        from phonefair.analysis.served import phone_gaps

        enc = self._encoder(encoder)
        a = self.analysis_settings
        return phone_gaps(self.probes(enc)["speaker_phone_counts"], self.designs[enc], self.decisions(enc),
                          level=a.level, fdr_alpha=a.fdr_alpha)

    def amplification(self, encoder: str | None = None) -> Any:
        """Does the encoder make a group's gap or inherit it from the signal? The encoder's gaps against the acoustic
        baseline's (:func:`phonefair.analysis.baseline.amplification`); ``None`` without a baseline."""
        enc = self._encoder(encoder)
        if self.baseline is None or enc == self.baseline:
            return None
        from phonefair.analysis.baseline import amplification

        a = self.analysis_settings

        def acc(name: str) -> pd.DataFrame:
            sa = self.probes(name)["speaker_accuracy"]
            return sa.assign(accuracy=sa["standardized_accuracy"])

        from phonefair.analysis import headline_layer

        return amplification(acc(enc), acc(self.baseline), reference=self.reference, level=a.level,
                             seed=self.seed, best_layer=headline_layer(self.probes(enc)["speaker_accuracy"]))

    def identity(self, encoder: str | None = None) -> Any:
        """The group- and speaker-identity lenses (:func:`phonefair.probes.identity.identity_lenses`)."""
        enc = self._encoder(encoder)
        if (enc, "identity") not in self._results:
            from phonefair.probes.identity import IdentitySettings, identity_lenses

            st = self.lens_settings
            if st is None or isinstance(st, Mapping):
                st = IdentitySettings(**{"seed": self.seed, "exclude_phones": self.probe_settings.exclude_phones,
                                         "level": self.analysis_settings.level, **dict(st or {})})
            self._results[(enc, "identity")] = identity_lenses(self.sources[enc], self.designs[enc].groups,
                                                               settings=st, progress=self.progress)
        return self._results[(enc, "identity")]

    def run(self) -> Audit:
        """Compute every stage of every encoder now (otherwise each is computed when first asked for)."""
        for enc in self.encoders:
            self.typology(enc)
        return self

    # ------------------------------------------------------------------ views
    def verdicts(self, encoder: str | None = None) -> pd.DataFrame:
        """One row per (encoder, group): served worse? where? why? (see :mod:`phonefair.analysis.verdict`)."""
        from phonefair.analysis import headline_layer, verdict_table

        encs = self.encoders if encoder is None else [self._encoder(encoder)]
        parts = []
        for enc in encs:
            probes = self.probes(enc)
            amp = self.amplification(enc) if self.baseline is not None and enc != self.baseline else None
            v = verdict_table(self.served(enc), self.typology(enc), probes["in_group_benefit"],
                              headline=headline_layer(probes["speaker_accuracy"]),
                              alpha=self.analysis_settings.alpha, phone_gaps=self.phone_gaps(enc),
                              amplification=None if amp is None else amp.tables()["amplification"],
                              decisions=self.decisions(enc))
            parts.append(v.assign(encoder=enc) if len(encs) > 1 or encoder is None else v)
        return pd.concat(parts, ignore_index=True)

    def tables(self) -> dict[str, pd.DataFrame]:
        """Every result table, the encoders' rows stacked with an ``encoder`` column."""
        from phonefair.audit.tables import collect_tables

        return collect_tables(self)

    def summary(self) -> dict[str, Any]:
        """The headline numbers per encoder (JSON-able): served worse? where? why? with intervals."""
        from phonefair.report.summary import headline

        return headline(self)

    def summary_text(self) -> str:
        """The headline as a few lines of text."""
        from phonefair.report.summary import headline_lines

        return "\n".join(headline_lines(self.summary()))

    def report(self, out_dir: str | Path, *, title: str | None = None, caveats: list[str] | None = None,
               provenance: Mapping[str, Any] | None = None) -> Path:
        """Write ``out_dir/report.html`` (self-contained), every table under ``out_dir/tables/`` (Parquet + CSV; the
        headline ones also LaTeX), ``out_dir/summary.json`` and the figures under ``out_dir/figures/``."""
        from phonefair.io import write_json, write_table
        from phonefair.report import write_report

        out, tables, summary = Path(out_dir), self.tables(), self.summary()
        for name, df in tables.items():
            write_table(df, out / "tables" / name)
        write_json(out / "summary.json", summary)
        return write_report(out, tables, summary, dict(provenance or {}), title=title, caveats=caveats)

    def __repr__(self) -> str:
        d = next(iter(self.designs.values()))
        return (f"Audit(encoders={self.encoders}, groups={d.group_names}, speakers={d.n_speakers}, "
                f"reference={self.reference!r})")
