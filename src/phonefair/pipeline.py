"""``run(config)``: corpus → groups/split → extract (per encoder) → probe → analyze → report, with caching.

Every stage's output is cached under ``out_dir`` with a key that hashes the stage's inputs and settings. A stage
writes into a temporary folder, writes its ``COMPLETE.json`` marker last and then renames the folder into place,
so an interrupted stage never looks complete and a rerun recomputes exactly the stages whose inputs or settings
changed. Extraction is additionally content-addressed by the extraction stage itself (its store is reused).

Outputs (``out_dir``): ``corpus/`` (the saved Corpus), ``cache/<stage>/<key>/``, ``tables/*.parquet`` + ``*.csv``
(results of all encoders concatenated with an ``encoder`` column), ``summary.json`` (headline numbers with CIs),
``provenance.json`` (config, versions, seeds, model revisions, corpus fingerprint), ``report.html`` and
``figures/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import platform
import shutil
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from phonefair.config import ConfigError, RunConfig, load_config, load_preset
from phonefair.corpus.schema import Corpus
from phonefair.errors import DataError, RunError
from phonefair.io import json_default

__all__ = ["STAGES", "Comparison", "RunResult", "RunError", "DataError", "compare", "demo", "extract_shard",
           "finetune", "headline_lines", "merge_shards", "run"]

STAGES: tuple[str, ...] = ("corpus", "groups", "extract", "probe", "analyze", "report")
MARKER = "COMPLETE.json"


@dataclass
class RunResult:
    """What :func:`run` produced. ``stages_run`` lists the stages computed now (not loaded from cache)."""

    tables: dict[str, pd.DataFrame]
    summary: dict[str, Any]
    report_path: Path | None
    out_dir: Path
    stages_run: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- utilities
def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=_json_default))


def _json_default(o: Any) -> Any:
    """:func:`phonefair.io.json_default`, plus what configs and summaries hold: dataclasses, mappings, paths,
    missing values; non-finite numbers become null (strict JSON for summary.json)."""
    if is_dataclass(o) and not isinstance(o, type):
        return asdict(o)
    if isinstance(o, Mapping):
        return dict(o)
    if isinstance(o, np.floating) and not np.isfinite(o):
        return None
    if o is pd.NA:
        return None
    if isinstance(o, (Path, pd.Timestamp)):
        return str(o)
    if isinstance(o, (np.generic, np.ndarray, set, frozenset, tuple)):
        return json_default(o)
    return repr(o)


def _key(*parts: Any) -> str:
    """Stable short hash of JSON-able settings (the cache key)."""
    blob = json.dumps(parts, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    os.replace(tmp, path)


def _write_table(df: pd.DataFrame, path_stem: Path) -> None:
    """Parquet + CSV, each atomically. Provenance goes into the Parquet metadata (JSON-clean)."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    out = df.copy()
    out.attrs = _jsonable(dict(df.attrs))
    for ext in ("parquet", "csv"):
        final = path_stem.with_suffix(f".{ext}")
        tmp = final.with_name(f".{final.name}.tmp")
        if ext == "parquet":
            out.to_parquet(tmp, index=False)
        else:
            out.to_csv(tmp, index=False)
        os.replace(tmp, final)


class _Log:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[phonefair {time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- stage cache
class StageCache:
    """``root/cache/<stage>/<key>/``: tables (Parquet), an optional pickled object and ``COMPLETE.json`` last."""

    def __init__(self, root: Path) -> None:
        self.root = root / "cache"

    def dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def complete(self, stage: str, key: str) -> bool:
        return (self.dir(stage, key) / MARKER).is_file()

    def save(self, stage: str, key: str, tables: Mapping[str, pd.DataFrame], meta: Mapping[str, Any],
             obj: Any = None) -> None:
        final = self.dir(stage, key)
        tmp = final.with_name(f".{key}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            provs = {}
            for name, df in tables.items():
                clean = df.copy()
                clean.attrs = {}
                clean.to_parquet(tmp / f"{name}.parquet", index=False)
                provs[name] = df.attrs.get("provenance", {})
            if obj is not None:
                try:
                    (tmp / "object.pkl").write_bytes(pickle.dumps(obj))
                except Exception:  # noqa: BLE001 - an unpicklable result only costs a recomputation later
                    pass
            _write_json(tmp / MARKER, {"stage": stage, "key": key, "tables": sorted(tables),
                                       "provenance": provs, "meta": dict(meta), "finished": time.time()})
            shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover from an interrupted run
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def load(self, stage: str, key: str) -> tuple[dict[str, pd.DataFrame], dict[str, Any], Any]:
        d = self.dir(stage, key)
        marker = json.loads((d / MARKER).read_text())
        tables = {}
        for name in marker["tables"]:
            df = pd.read_parquet(d / f"{name}.parquet")
            df.attrs["provenance"] = marker["provenance"].get(name, {})
            tables[name] = df
        obj = None
        if (d / "object.pkl").is_file():
            try:
                obj = pickle.loads((d / "object.pkl").read_bytes())
            except Exception:  # noqa: BLE001 - stale class definitions: treat as absent
                obj = None
        return tables, marker.get("meta", {}), obj


# ---------------------------------------------------------------------------------------------- stage functions
# Module-level so that tests (and users) can swap them; each is a thin adapter over the stage's public API.
def load_corpus_stage(cfg: RunConfig, out_dir: Path, *, progress: bool = True) -> Corpus:
    """Load the corpus named by ``[corpus]`` (``kind = "synthetic"`` builds one under ``out_dir/synth``)."""
    if cfg.corpus.kind == "synthetic":
        from phonefair.synth.corpus import build_synthetic_corpus

        options = {"seed": cfg.run.seed, **dict(cfg.corpus.options)}
        # rebuilt whenever the corpus stage's key changes (a few seconds); overwrite: settings may have changed
        return build_synthetic_corpus(out_dir / "synth", overwrite=True, **{"progress": progress, **options})
    from phonefair.corpus import load_corpus

    assert cfg.corpus.root is not None  # checked by the config
    return load_corpus(cfg.corpus.kind, cfg.corpus.root, **dict(cfg.corpus.options))


_FROM_CONFIG: Any = object()


def validate_stage(corpus: Corpus, cfg: RunConfig, *, group_by: Any = _FROM_CONFIG, decode_audio: bool = True,
                   progress: bool = False) -> tuple[pd.DataFrame, dict[str, Any], bool, str]:
    """``validate_corpus`` → (problems table, summary, ok, text); ``group_by`` defaults to ``[groups]``;
    ``decode_audio=False`` checks audio headers only (huge corpora)."""
    from phonefair.corpus.validate import validate_corpus

    cols = cfg.groups.columns
    if group_by is _FROM_CONFIG:
        group_by = cols[0] if len(cols) == 1 else None
    rep = validate_corpus(corpus, group_by=group_by, min_speakers_per_group=cfg.groups.min_speakers,
                          decode_audio=decode_audio, progress=progress)
    return rep.problems, dict(rep.summary), bool(rep.ok), rep.to_text()


def groups_stage(corpus: Corpus, cfg: RunConfig) -> tuple[pd.Series, pd.DataFrame, pd.DataFrame, pd.Series]:
    """(groups: speaker → label, excluded, group_summary, split: speaker → train/test)."""
    from phonefair import groups as G

    g = cfg.groups
    spec = G.GroupSpec(attributes=g.columns, bins={k: list(v) for k, v in g.bins.items()},
                       mapping={k: dict(v) for k, v in g.mapping.items()}, reference=g.reference,
                       min_speakers=g.min_speakers, missing=g.missing)
    assignment = G.assign_groups(corpus.speakers, spec)
    if assignment.groups.empty:
        reasons = assignment.excluded["reason"].value_counts()
        why = "; ".join(f"{n} speaker(s): {r}" for r, n in reasons.head(3).items())
        raise DataError(f"no speaker group is usable ([groups] {'/'.join(g.columns)}, min_speakers = "
                        f"{g.min_speakers}): {why}")
    summary = G.group_summary(corpus, assignment)
    own = corpus.phones.dropna(subset=["split"]).groupby("speaker")["split"].first()
    if cfg.split.use_corpus_split and own.reindex(assignment.groups.index).notna().all():
        split = own.reindex(assignment.groups.index).astype("string").rename("split")
    else:
        split = G.split_speakers(assignment.groups, test_fraction=cfg.split.test_fraction, seed=cfg.split.seed)
    return assignment.groups, assignment.excluded, summary, split


def model_stage(enc: Any, cfg: RunConfig, out_dir: Path) -> Any:
    """Resolve an ``[[encoders]]`` entry to an :class:`~phonefair.encoders.Encoder` (``tiny:<family>`` is built
    under ``out_dir/models``; weights load lazily, so a cached store never loads the model)."""
    from phonefair.encoders import load_encoder
    from phonefair.encoders.tiny import save_tiny_model

    model: str = enc.model
    if model.startswith("tiny:"):
        family = model.split(":", 1)[1]
        d = out_dir / "models" / f"tiny-{family}"
        if not (d / "config.json").is_file():
            save_tiny_model(family, d, seed=cfg.run.seed)
        model = str(d)
    return load_encoder(model, revision=enc.revision, device=_device(enc.device), layers=enc.layers)


def extract_stage(corpus: Corpus, enc: Any, cfg: RunConfig, out_dir: Path, progress: bool) -> Any:
    """Extract one encoder's phone embeddings (store under ``out_dir/stores``), locally or on Ray
    (``[extraction] backend``); both give the same content-addressed store."""
    encoder = model_stage(enc, cfg, out_dir)
    kw = dict(progress=progress, **_extraction_kwargs(enc, out_dir, cfg))
    x = cfg.extraction
    if x.backend == "ray":
        from phonefair.extraction.ray_backend import extract_ray

        return extract_ray(corpus, encoder, num_workers=x.num_workers, num_gpus_per_worker=x.num_gpus_per_worker,
                           device=_device(enc.device), ray_address=x.ray_address, **kw)
    from phonefair.extraction import extract

    return extract(corpus, encoder, **kw)


def _device(name: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``."""
    if name != "auto":
        return name
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        return "cpu"


def probe_stage(source: Any, groups: pd.Series, cfg: RunConfig, *, progress: bool = True) -> Any:
    """``phonefair.probes.fit_probes`` → ProbeResults (``.tables()``)."""
    from phonefair.probes import fit_probes

    p = cfg.probes
    return fit_probes(source, groups, layers=None if p.layers == "all" else list(p.layers), progress=progress,
                      populations=tuple(p.populations), seeds=tuple(p.seeds), probe=p.type, n_boot=p.n_boot,
                      level=p.level, seed=cfg.run.seed, fdr_alpha=cfg.analysis.fdr_alpha,
                      device=_device(cfg.encoders[0].device))


def analyze_stage(source: Any, groups: pd.Series, cfg: RunConfig, probe_results: Any, *,
                  progress: bool = True) -> Any:
    """``phonefair.analysis.analyze`` → TypologyResults (``.tables()``)."""
    from phonefair.analysis import analyze

    a = cfg.analysis
    return analyze(source, groups, reference=a.reference or cfg.groups.reference, probe_results=probe_results,
                   layers=None if cfg.probes.layers == "all" else list(cfg.probes.layers), n_perm=a.n_perm,
                   n_boot=a.n_boot, seed=cfg.run.seed, spaces=tuple(a.spaces), fdr_alpha=a.fdr_alpha,
                   level=cfg.probes.level, min_speakers=cfg.groups.min_speakers, progress=progress)


def _analysis_tables(t: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The typology's own ``problems`` (phones or speakers it could not analyse) must not replace the corpus's
    ``problems`` table: it is renamed ``analysis_problems``."""
    return {("analysis_problems" if k == "problems" else k): v for k, v in t.items()}


def _tables_of(result: Any) -> dict[str, pd.DataFrame]:
    if isinstance(result, Mapping):
        return dict(result)
    if hasattr(result, "tables"):
        return dict(result.tables())
    raise RunError(f"stage returned {type(result).__name__}, expected an object with .tables() or a dict")


# ---------------------------------------------------------------------------------------------- summary
def _f(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _encoder_summary(t: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    from phonefair.report.figures import best_layer

    gg, pa = t.get("group_gap"), t.get("probe_accuracy")
    best = best_layer(gg, pa)
    s: dict[str, Any] = {"best_layer": best}
    if gg is not None and best is not None and not gg.empty:
        row = gg[gg["layer"].astype(str) == best].iloc[0]
        s.update(overall_accuracy=_f(row.get("overall_accuracy")), best_group=row.get("best_group"),
                 worst_group=row.get("worst_group"), gap=_f(row.get("gap")), gap_ci_low=_f(row.get("gap_ci_low")),
                 gap_ci_high=_f(row.get("gap_ci_high")), ratio=_f(row.get("ratio")))
        imax = gg["gap"].astype(float).idxmax()
        s["max_gap_layer"] = str(gg.loc[imax, "layer"])
        s["max_gap"] = _f(gg.loc[imax, "gap"])
    b = t.get("in_group_benefit")
    if b is not None and best is not None and not b.empty:
        s["in_group_benefit"] = [
            {"group": str(r["group"]), "delta": _f(r["delta"]), "ci_low": _f(r["ci_low"]), "ci_high": _f(r["ci_high"]),
             "q_value": _f(r.get("q_value")), "significant": bool(r.get("significant", False))}
            for _, r in b[b["layer"].astype(str) == best].iterrows()]
    v = t.get("verdict")
    if v is not None and best is not None and not v.empty:
        s["verdicts"] = [{"group": str(r["group"]), "verdict": str(r["verdict"]),
                          "accuracy_gap": _f(r.get("accuracy_gap")),
                          "accuracy_gap_ci_low": _f(r.get("accuracy_gap_ci_low")),
                          "accuracy_gap_ci_high": _f(r.get("accuracy_gap_ci_high")),
                          "evidence": str(r.get("evidence", ""))}
                         for _, r in v[v["layer"].astype(str) == best].iterrows()]
    return _jsonable(s)


def headline_lines(summary: Mapping[str, Any]) -> list[str]:
    """A few terminal lines with the headline findings and their CIs."""
    lines = []
    for name, s in (summary.get("encoders") or {}).items():
        if s.get("best_layer") is None:
            lines.append(f"{name}: no probe results")
            continue
        acc = s.get("overall_accuracy")
        head = f"{name}: layer {s['best_layer']}" + (f", accuracy {acc:.3f}" if acc is not None else "")
        if s.get("gap") is not None:
            head += (f"; worst group {s.get('worst_group')} trails {s.get('best_group')} by {s['gap']:.3f} "
                     f"[95% CI {s.get('gap_ci_low') or float('nan'):.3f}, {s.get('gap_ci_high') or float('nan'):.3f}]")
        lines.append(head)
        sig = [b for b in s.get("in_group_benefit", []) if b.get("significant")]
        if sig:
            lines.append("  in-group benefit: " + ", ".join(
                f"{b['group']} {b['delta']:+.3f} [{b['ci_low']:+.3f}, {b['ci_high']:+.3f}]" for b in sig))
        counts: dict[str, list[str]] = {}
        for v in s.get("verdicts", []):
            counts.setdefault(v["verdict"], []).append(v["group"])
        if counts:
            lines.append("  verdicts: " + "; ".join(f"{k}: {', '.join(g)}" for k, g in counts.items()))
    return lines


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("phonefair", "numpy", "pandas", "scipy", "torch", "transformers", "sklearn"):
        try:
            out[mod] = str(import_module(mod).__version__)
        except Exception:  # noqa: BLE001 - optional packages
            out[mod] = "not installed"
    return out


# ---------------------------------------------------------------------------------------------- run
def _as_config(config: RunConfig | str | Path) -> RunConfig:
    if isinstance(config, RunConfig):
        return config
    return load_config(config)


@dataclass
class _Prepared:
    corpus: Corpus
    groups: pd.Series
    split: pd.Series  # speaker -> "train" / "test"
    fingerprint: str
    tables: dict[str, pd.DataFrame]
    keys: dict[str, Any]
    validation: dict[str, Any]
    ran: list[str]


def _prepare(cfg: RunConfig, out: Path, log: _Log, cache: StageCache) -> _Prepared:
    """The corpus and groups stages (cached): what every later stage, fine-tuning included, starts from."""
    ran: list[str] = []
    tables: dict[str, pd.DataFrame] = {}
    keys: dict[str, Any] = {}

    # -- corpus: saved under out/corpus with a stage marker holding the key
    corpus_key = _key("corpus", cfg.corpus, cfg.corpus.kind == "synthetic" and cfg.run.seed)
    keys["corpus"] = corpus_key
    cdir, cmark = out / "corpus", out / "corpus" / MARKER
    if cmark.is_file() and json.loads(cmark.read_text()).get("key") == corpus_key:
        log(f"corpus: cached ({cdir})")
        corpus = Corpus.load(cdir)
        val = json.loads(cmark.read_text()).get("validation", {})
    else:
        log(f"corpus: loading {cfg.corpus.kind} from {cfg.corpus.root or out / 'synth'}")
        if cmark.exists():
            cmark.unlink()
        corpus = load_corpus_stage(cfg, out, progress=log.enabled)
        problems, vsummary, ok, text = validate_stage(corpus, cfg, progress=log.enabled)
        if corpus.phones.empty:
            raise DataError(f"corpus has no phone tokens:\n{text}")
        if not ok and cfg.corpus.strict:
            raise DataError(f"corpus failed validation ([corpus] strict = true):\n{text}")
        if not ok:  # reported skips (unknown labels, unreadable files): the run goes on, the report lists them
            n_err = int((problems["severity"] == "error").sum())
            log(f"corpus: {n_err} problem(s) of severity 'error' (items excluded); see tables/problems.csv "
                f"or run 'phonefair validate'")
        corpus = corpus.with_tables(problems=problems) if problems is not corpus.problems else corpus
        corpus.save(cdir)
        val = {"summary": vsummary, "text": text}
        _write_json(cmark, {"stage": "corpus", "key": corpus_key, "validation": val})
        ran.append("corpus")
    fingerprint = corpus.fingerprint()
    tables["problems"] = corpus.problems

    # -- groups + split
    groups_key = _key("groups", fingerprint, cfg.groups, cfg.split)
    keys["groups"] = groups_key
    if cache.complete("groups", groups_key):
        log("groups: cached")
        gt, _, _ = cache.load("groups", groups_key)
    else:
        log("groups: assigning speakers to groups and splitting")
        groups, excluded, gsummary, split = groups_stage(corpus, cfg)
        gt = {"groups": pd.DataFrame({"speaker": groups.index.astype(str), "group": groups.astype(str).to_numpy(),
                                      "split": split.reindex(groups.index).astype("string").to_numpy()}),
              "excluded": excluded, "group_summary": gsummary}
        cache.save("groups", groups_key, gt, {"name": str(groups.name)})
        ran.append("groups")
    gdf = gt["groups"]
    groups = pd.Series(gdf["group"].astype(str).to_numpy(), index=gdf["speaker"].astype(str).to_numpy(),
                       name="/".join(cfg.groups.columns))
    split = pd.Series(gdf["split"].to_numpy(), index=groups.index, name="split")
    tables.update(group_summary=gt["group_summary"], excluded=gt["excluded"], speakers=gdf)
    return _Prepared(corpus=corpus, groups=groups, split=split, fingerprint=fingerprint,
                     tables=tables, keys=keys, validation=val, ran=ran)


def run(config: RunConfig | str | Path, *, stages: Iterable[str] | None = None, progress: bool = True,
        title: str | None = None, banner: str | None = None) -> RunResult:
    """Run the pipeline for ``config`` (a :class:`RunConfig` or a TOML path).

    ``stages``: the stages to run (default: all of :data:`STAGES`). ``corpus`` and ``groups`` always run (or load
    from cache) because everything depends on them; ``extract`` runs when named or when a named ``probe`` /
    ``analyze`` has to recompute; stages not named are not computed, but their cached outputs (same key) are
    included in the tables and the report. Cached stages are skipped.
    """
    cfg = _as_config(config)
    wanted = set(STAGES if stages is None else stages)
    if unknown := wanted - set(STAGES):
        raise ConfigError(f"unknown stage(s) {sorted(unknown)}; stages are {', '.join(STAGES)}")
    out = Path(cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    log = _Log(progress)
    cache = StageCache(out)
    prep = _prepare(cfg, out, log, cache)
    corpus, groups = prep.corpus, prep.groups
    ran, tables, keys, val = prep.ran, prep.tables, prep.keys, prep.validation
    fingerprint, groups_key = prep.fingerprint, keys["groups"]

    # -- per encoder: extract → probe → analyze
    per_enc: dict[str, dict[str, pd.DataFrame]] = {}
    revisions: dict[str, Any] = {}
    for enc in cfg.encoders:
        ek = _key("extract", fingerprint, groups_key, enc)
        pk = _key("probe", ek, cfg.probes, cfg.run.seed)
        ak = _key("analyze", pk, cfg.analysis, cfg.groups.reference, cfg.probes.layers, cfg.run.seed)
        keys[enc.name] = {"extract": ek, "probe": pk, "analyze": ak}
        source_box: list[Any] = []

        def source(enc: Any = enc, ek: str = ek, box: list[Any] = source_box) -> Any:
            if not box:
                log(f"extract [{enc.name}]: {enc.model}")
                # the store is keyed by the corpus content, not the split, so it is reused across split
                # settings; the run's split is put on its tokens here, in memory
                src = extract_stage(corpus, enc, cfg, out, progress)
                src.tokens = src.tokens.assign(
                    split=src.tokens["speaker"].astype(str).map(prep.split).astype("string"))
                box.append(src)
                if not cache.complete("extract", ek):
                    prov = dict(getattr(src, "provenance", {}) or {})
                    cache.save("extract", ek, {}, {"encoder": enc.name, "store_provenance": prov,
                                                   "store": str(getattr(src, "root", ""))})
                    ran.append(f"extract:{enc.name}")
            return box[0]

        if "extract" in wanted and not cache.complete("extract", ek):
            source()
        elif "extract" in wanted:
            log(f"extract [{enc.name}]: cached")
        if cache.complete("extract", ek):
            revisions[enc.name] = cache.load("extract", ek)[1].get("store_provenance", {})
        enc_tables: dict[str, pd.DataFrame] = {}
        probe_obj: Any = None
        if cache.complete("probe", pk):
            if "probe" in wanted:
                log(f"probe [{enc.name}]: cached")
            t, _, probe_obj = cache.load("probe", pk)
            enc_tables.update(t)
        elif "probe" in wanted:
            log(f"probe [{enc.name}]: fitting")
            probe_obj = probe_stage(source(), groups, cfg, progress=progress)
            t = _tables_of(probe_obj)
            cache.save("probe", pk, t, {"encoder": enc.name}, obj=probe_obj)
            enc_tables.update(t)
            ran.append(f"probe:{enc.name}")
        if cache.complete("analyze", ak):
            if "analyze" in wanted:
                log(f"analyze [{enc.name}]: cached")
            enc_tables.update(_analysis_tables(cache.load("analyze", ak)[0]))
        elif "analyze" in wanted:
            log(f"analyze [{enc.name}]: typology")
            res = analyze_stage(source(), groups, cfg, probe_obj, progress=progress)
            t = _tables_of(res)
            cache.save("analyze", ak, t, {"encoder": enc.name})
            enc_tables.update(_analysis_tables(t))
            ran.append(f"analyze:{enc.name}")
        if source_box and enc.name not in revisions:
            revisions[enc.name] = dict(getattr(source_box[0], "provenance", {}) or {})
        per_enc[enc.name] = enc_tables

    # -- concatenate with an encoder column
    names = sorted({n for t in per_enc.values() for n in t})
    for n in names:
        parts = []
        for enc_name, t in per_enc.items():
            if n in t:
                parts.append(t[n].assign(encoder=enc_name))
        df = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
        df.attrs["provenance"] = {e: per_enc[e][n].attrs.get("provenance", {}) for e in per_enc if n in per_enc[e]}
        tables[n] = df

    summary: dict[str, Any] = {
        "demo": cfg.corpus.kind == "synthetic" and cfg.encoders[0].model.startswith("tiny:"),
        "corpus": {"name": corpus.name, "speakers": corpus.counts["speakers"], "speakers_in_groups": len(groups),
                   "groups": int(groups.nunique()), "recordings": corpus.counts["recordings"],
                   "phones": corpus.counts["phones"], "hours": round(corpus.hours, 3),
                   "problems": corpus.counts["problems"], "fingerprint": fingerprint},
        "encoders": {e: _encoder_summary(t) for e, t in per_enc.items()},
        "stages_run": ran,
    }
    provenance: dict[str, Any] = {
        "config": cfg.to_dict(), "config_source": cfg.source, "versions": _versions(),
        "seeds": {"run": cfg.run.seed, "split": cfg.split.seed, "probes": list(cfg.probes.seeds)},
        "models": {e.name: {"model": e.model, "revision": e.revision, "store": revisions.get(e.name, {})}
                   for e in cfg.encoders},
        "corpus": corpus.manifest(), "validation": val, "stage_keys": keys,
        "platform": platform.platform(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for name, df in tables.items():
        df.attrs.setdefault("provenance", {})
        _write_table(df, out / "tables" / name)
    _write_json(out / "tables" / "manifest.json",
                {n: {"rows": len(df), "columns": list(map(str, df.columns)),
                     "provenance": df.attrs.get("provenance", {})} for n, df in tables.items()})
    _write_json(out / "summary.json", summary)
    _write_json(out / "provenance.json", provenance)

    report_path: Path | None = None
    if "report" in wanted:
        from phonefair.report import write_report

        log("report: rendering")
        report_path = write_report(out, tables, summary, _jsonable(provenance),
                                   title=title or f"phonefair: {corpus.name} by {'/'.join(cfg.groups.columns)}",
                                   banner=banner)
        ran.append("report")
    log(f"done: {out}")
    return RunResult(tables=tables, summary=summary, report_path=report_path, out_dir=out, stages_run=ran)


def _setup(config: RunConfig | str | Path, progress: bool) -> tuple[RunConfig, Path, _Log, _Prepared]:
    cfg = _as_config(config)
    out = Path(cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    log = _Log(progress)
    return cfg, out, log, _prepare(cfg, out, log, StageCache(out))


def _extraction_kwargs(enc: Any, out: Path, cfg: RunConfig) -> dict[str, Any]:
    # audio that validation reported as unusable (NaN/inf, digital silence, unreadable) is a reported skip (NaN
    # rows + a problem), as every other validation error is; [corpus] strict = true stops at validation already
    return dict(store_root=out / "stores", layers=enc.layers, pooling=enc.pooling, dtype=enc.dtype,
                batch_size=enc.batch_size, on_audio_error="raise" if cfg.corpus.strict else "skip")


def extract_shard(config: RunConfig | str | Path, *, shard: int, num_shards: int, progress: bool = True
                  ) -> list[Path]:
    """Static sharding (SLURM arrays, torchrun): extract shard ``shard`` of ``num_shards`` for every encoder.

    Idempotent: a finished shard is skipped, an interrupted one resumes. :func:`merge_shards` assembles the stores
    (docs/scaleout.md); ``run`` then reuses them like any extracted store.
    """
    from phonefair.extraction.shards import extract_shard as _extract_shard

    cfg, out, log, prep = _setup(config, progress)
    paths = []
    for enc in cfg.encoders:
        log(f"extract [{enc.name}]: shard {shard} of {num_shards}")
        paths.append(_extract_shard(prep.corpus, model_stage(enc, cfg, out), shard=shard, num_shards=num_shards,
                                    progress=progress, **_extraction_kwargs(enc, out, cfg)))
    return paths


def merge_shards(config: RunConfig | str | Path, *, num_shards: int, progress: bool = True) -> dict[str, Any]:
    """Assemble and verify every encoder's store from its ``num_shards`` shards (row coverage, checksums)."""
    from phonefair.extraction.shards import merge_shards as _merge

    cfg, out, log, prep = _setup(config, progress)
    stores = {}
    for enc in cfg.encoders:
        log(f"merge [{enc.name}]: {num_shards} shards")
        stores[enc.name] = _merge(prep.corpus, model_stage(enc, cfg, out), num_shards=num_shards,
                                  **_extraction_kwargs(enc, out, cfg))
    return stores


def finetune(config: RunConfig | str | Path, *, progress: bool = True) -> tuple[dict[str, Any], pd.DataFrame]:
    """Fairness fine-tuning from the ``[finetune]`` section: one run per objective variant on the training
    speakers of the run's split, phone error rate per group on its test speakers (docs/finetune.md).

    Writes ``<dir>/<variant>/model`` (a standard transformers directory to list under ``[[encoders]]``) and
    ``tables/finetune_per.{parquet,csv}``.
    """
    from phonefair.finetune import finetune_variants

    cfg, out, log, prep = _setup(config, progress)
    ft = cfg.finetune
    if ft is None:
        raise ConfigError(f"{cfg.source}: [finetune]: section missing (model, variants, steps, ...)")
    model = ft.model
    if model.startswith("tiny:"):
        from phonefair.encoders.tiny import save_tiny_model

        d = out / "models" / f"tiny-{model.split(':', 1)[1]}"
        if not (d / "config.json").is_file():
            save_tiny_model(model.split(":", 1)[1], d, seed=cfg.run.seed)
        model = str(d)
    ft_dir = Path(ft.dir) if ft.dir else out / "finetune"
    log(f"finetune: {', '.join(ft.variants)} on {model} -> {ft_dir}")
    options = {"seed": cfg.run.seed, "device": _device(cfg.encoders[0].device), "progress": progress,
               **dict(ft.options)}
    from phonefair.groups import apply_split

    results, per = finetune_variants(apply_split(prep.corpus, prep.split), prep.groups, model, ft_dir,
                                     variants=list(ft.variants),
                                     **options)
    per.attrs["provenance"] = {"finetune": cfg.to_dict().get("finetune"), "model": model}
    _write_table(per, out / "tables" / "finetune_per")
    return results, per


@dataclass
class Comparison:
    """What :func:`compare` produced: change tables (after − before, paired where possible) and the report."""

    tables: dict[str, pd.DataFrame]
    report_path: Path
    run: RunResult


def compare(config: RunConfig | str | Path, *, before: str, after: str, progress: bool = True) -> Comparison:
    """Audit two encoders of the config (e.g. the original and its fine-tuned copy) on the same speakers and
    layers, and report the change in per-group accuracy, gap, in-group benefit and variance with paired,
    speaker-clustered CIs (``out/comparison.html``, ``tables/change_*``)."""
    from phonefair.finetune import compare_audits, write_comparison_report

    cfg = _as_config(config)
    names = [e.name for e in cfg.encoders]
    for side, name in (("before", before), ("after", after)):
        if name not in names:
            raise ConfigError(f"{cfg.source}: --{side} {name!r} is not an [[encoders]] name; names: {names}")
    result = run(cfg, progress=progress)

    def side(name: str) -> dict[str, pd.DataFrame]:
        return {k: df[df["encoder"] == name].drop(columns="encoder").reset_index(drop=True)
                for k, df in result.tables.items() if "encoder" in df.columns}

    changes = compare_audits(side(before), side(after), n_boot=cfg.probes.n_boot, seed=cfg.run.seed,
                             level=cfg.probes.level)
    out = Path(cfg.output.dir)
    for k, df in changes.items():
        _write_table(df, out / "tables" / k)
    per_path = out / "tables" / "finetune_per.parquet"
    per = pd.read_parquet(per_path) if per_path.is_file() else None
    path = write_comparison_report(changes, out / "comparison.html", before_name=before, after_name=after,
                                   per_group_per=per)
    # the main report gains its "Before / after" section
    from phonefair.report import write_report

    provenance = json.loads((out / "provenance.json").read_text())
    write_report(out, {**result.tables, **changes}, result.summary, provenance,
                 title=f"phonefair: {before} → {after}")
    return Comparison(tables=dict(changes), report_path=path, run=result)


def demo(out_dir: str | Path, *, quick: bool = False, progress: bool = True) -> RunResult:
    """Synthetic multi-accent corpus + tiny random wav2vec2 → every stage → ``out_dir/report.html``.

    It shows the machinery, not a finding. ``quick`` uses fewer speakers, seeds and resamples (for tests).
    """
    out = Path(out_dir).resolve()
    cfg = load_preset("demo", base_dir=out).replace_output(out)
    if quick:
        opts = dict(cfg.corpus.options)
        opts.update(speakers_per_group=min(int(opts.get("speakers_per_group", 6)), 4),
                    sentences_per_speaker=min(int(opts.get("sentences_per_speaker", 6)), 3))
        cfg = replace(cfg, corpus=replace(cfg.corpus, options=opts),
                      split=replace(cfg.split, test_fraction=0.5),
                      probes=replace(cfg.probes, seeds=(0,), n_boot=50),
                      analysis=replace(cfg.analysis, n_perm=50, n_boot=50))
    from phonefair.report import DEMO_BANNER

    return run(cfg, progress=progress, title="phonefair demo (synthetic)", banner=DEMO_BANNER)
