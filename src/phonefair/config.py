"""The run configuration: one typed, frozen object read from a TOML file.

A config file has the sections ``[corpus]``, ``[groups]``, ``[split]``, ``[[encoders]]`` (one table per encoder),
``[probes]``, ``[analysis]``, ``[output]`` and ``[run]``; docs/usage.md is the reference. Every value is checked
here, once, so later stages never see a half-valid setting: errors name the file and the key path
(``config.toml: [probes] seeds: expected a list of integers, got 'abc'``) and unknown keys get a
"did you mean" suggestion, because a misspelt key silently falling back to a default is the worst failure mode.

Relative paths (``[corpus] root``, ``[output] dir``, a local encoder directory) are resolved against the
config file's folder, so a config plus its data can be moved together.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from phonefair.errors import ConfigError

__all__ = [
    "ConfigError", "CorpusConfig", "GroupsConfig", "SplitConfig", "EncoderConfig", "ProbesConfig",
    "AnalysisConfig", "OutputConfig", "RunSettings", "RunConfig", "load_config", "parse_config",
    "list_presets", "preset_text", "load_preset",
]

CORPUS_KINDS = ("timit", "l2arctic", "buckeye", "textgrid", "lhotse", "saved", "synthetic")
POPULATIONS = ("pooled", "group", "leave_out")
PROBE_TYPES = ("linear", "mlp")
POOLINGS = ("mean", "center", "middle_third")  # = phonefair.extraction.frames.POOLINGS (checked in tests)
BACKENDS = ("local", "ray")
DTYPES = ("float16", "float32")
SPACES = ("raw", "lda")


# ---------------------------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class CorpusConfig:
    """``[corpus]``: which loader reads the data (``phonefair.corpus.load_corpus(kind, root, **options)``)."""

    kind: str
    root: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # passed to the loader unchanged
    # validation errors (items the loader had to exclude) stop the run when strict; otherwise they are reported
    # (terminal, tables/problems.csv, the report) and the run goes on with what is usable
    strict: bool = False


@dataclass(frozen=True)
class GroupsConfig:
    """``[groups]``: how speakers become groups (``phonefair.groups.GroupSpec``)."""

    attribute: str | None = None
    attributes: tuple[str, ...] | None = None  # several attributes: intersectional groups
    # per attribute: numeric bin edges (e.g. age -> bands); TOML may give a plain list for one attribute
    bins: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    # per attribute: raw value -> group label (merge or rename); TOML may give a flat table for one attribute
    mapping: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    reference: str | None = None  # the reference group for gaps and shifts (default: a consensus of groups)
    min_speakers: int = 5  # smaller groups are excluded and reported, never silently merged
    missing: str = "exclude"  # speakers lacking the attribute: "exclude" (reported) or "group" ("<missing>")

    @property
    def columns(self) -> tuple[str, ...]:
        """The speaker attributes that define the groups."""
        return self.attributes if self.attributes else ((self.attribute,) if self.attribute else ())


@dataclass(frozen=True)
class SplitConfig:
    """``[split]``: speaker-disjoint train/test split."""

    use_corpus_split: bool = True  # use the corpus's own split column when it has one
    test_fraction: float = 0.3
    seed: int = 0


@dataclass(frozen=True)
class EncoderConfig:
    """One ``[[encoders]]`` table: a Hugging Face model id, a local model directory, or ``tiny:<family>``."""

    model: str
    name: str
    revision: str | None = None
    layers: str | tuple[str, ...] = "all"
    pooling: str = "mean"
    dtype: str = "float16"
    device: str = "auto"
    batch_size: int = 8


@dataclass(frozen=True)
class ExtractionConfig:
    """``[extraction]``: where the forward passes run (docs/scaleout.md). Every backend writes the same store."""

    backend: str = "local"  # "local" (one process) or "ray" (Ray Data actors; pip install 'phonefair[ray]')
    num_workers: int = 1  # Ray: encoder actors
    num_gpus_per_worker: float = 0.0  # Ray: GPUs per actor (0 on CPU clusters)
    ray_address: str | None = None  # Ray: cluster address (None: start or join a local runtime)


@dataclass(frozen=True)
class FinetuneSection:
    """``[finetune]``: fairness fine-tuning (docs/finetune.md); ``phonefair finetune CONFIG`` runs it.

    ``options`` are :class:`phonefair.finetune.FinetuneConfig` fields (steps, lr, adv_weight, ...), checked here.
    """

    model: str
    variants: tuple[str, ...] = ("ctc", "adversarial", "domain")
    dir: str | None = None  # default: <[output] dir>/finetune
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProbesConfig:
    """``[probes]``: per-group phoneme probes (``phonefair.probes.fit_probes``)."""

    type: str = "linear"
    populations: tuple[str, ...] = POPULATIONS
    seeds: tuple[int, ...] = (0, 1, 2)
    n_boot: int = 1000
    level: float = 0.95
    layers: str | tuple[str, ...] = "all"


@dataclass(frozen=True)
class AnalysisConfig:
    """``[analysis]``: the random-vs-systematic typology (``phonefair.analysis.analyze``)."""

    spaces: tuple[str, ...] = SPACES
    n_perm: int = 1000
    n_boot: int = 1000
    fdr_alpha: float = 0.05
    reference: str | None = None  # overrides [groups] reference for the shift analysis


@dataclass(frozen=True)
class OutputConfig:
    """``[output]``: where every result goes."""

    dir: str = "phonefair-out"


@dataclass(frozen=True)
class RunSettings:
    """``[run]``: global settings."""

    seed: int = 0


@dataclass(frozen=True)
class RunConfig:
    """A validated run configuration. Build with :func:`load_config` or :func:`parse_config`."""

    corpus: CorpusConfig
    groups: GroupsConfig
    encoders: tuple[EncoderConfig, ...]
    split: SplitConfig = field(default_factory=SplitConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    run: RunSettings = field(default_factory=RunSettings)
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)
    finetune: FinetuneSection | None = None
    source: str = "<dict>"  # the file it came from (not part of the settings)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable settings (for provenance and cache keys); ``source`` is left out."""
        d = _plain(asdict(self))
        d.pop("source", None)
        return d

    @property
    def out_dir(self) -> Path:
        return Path(self.output.dir)

    def replace_output(self, out_dir: str | Path) -> RunConfig:
        """A copy writing to another output folder."""
        from dataclasses import replace

        return replace(self, output=OutputConfig(dir=str(Path(out_dir).resolve())))


def _plain(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


# ---------------------------------------------------------------------------------------------- validation
class _Ctx:
    """Where we are in the file, for messages."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.source}: {path}: {msg}")


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


Check = Callable[[_Ctx, str, Any], Any]


def _str(choices: tuple[str, ...] | None = None) -> Check:
    def check(ctx: _Ctx, path: str, v: Any) -> str:
        if not isinstance(v, str) or not v.strip():
            raise ctx.fail(path, f"expected a non-empty string, got {_show(v)}")
        if choices is not None and v not in choices:
            hint = difflib.get_close_matches(v, choices, n=1)
            sugg = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ctx.fail(path, f"expected one of {list(choices)}, got {_show(v)}{sugg}")
        return v
    return check


def _int(minimum: int | None = None) -> Check:
    def check(ctx: _Ctx, path: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ctx.fail(path, f"expected an integer, got {_show(v)}")
        if minimum is not None and v < minimum:
            raise ctx.fail(path, f"expected an integer >= {minimum}, got {v}")
        return v
    return check


def _float(lo: float, hi: float, *, open_ends: bool = True) -> Check:
    def check(ctx: _Ctx, path: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ctx.fail(path, f"expected a number, got {_show(v)}")
        ok = lo < v < hi if open_ends else lo <= v <= hi
        if not ok:
            raise ctx.fail(path, f"expected a number in {'(' if open_ends else '['}{lo}, {hi}"
                                 f"{')' if open_ends else ']'}, got {v}")
        return float(v)
    return check


def _bool(ctx: _Ctx, path: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ctx.fail(path, f"expected true or false, got {_show(v)}")
    return v


def _list(item: Check, what: str, *, nonempty: bool = True, unique: bool = True) -> Check:
    def check(ctx: _Ctx, path: str, v: Any) -> tuple[Any, ...]:
        if not isinstance(v, list) or (nonempty and not v):
            raise ctx.fail(path, f"expected a {'non-empty ' if nonempty else ''}list of {what}, got {_show(v)}")
        out = []
        for i, x in enumerate(v):
            try:
                out.append(item(ctx, f"{path}[{i}]", x))
            except ConfigError:
                raise ctx.fail(path, f"expected a list of {what}, got {_show(v)} (item {i}: {_show(x)})") from None
        if unique and len(set(out)) != len(out):
            raise ctx.fail(path, f"list has duplicates: {_show(v)}")
        return tuple(out)
    return check


def _layers(ctx: _Ctx, path: str, v: Any) -> str | tuple[str, ...]:
    if v == "all":
        return "all"
    if isinstance(v, list) and v:
        out = []
        for x in v:
            if isinstance(x, bool) or not isinstance(x, (int, str)) or (isinstance(x, str) and not x):
                raise ctx.fail(path, f'expected "all" or a list of layer names/indices, got {_show(v)}')
            out.append(str(x))
        return tuple(out)
    raise ctx.fail(path, f'expected "all" or a non-empty list of layer names/indices (e.g. [0, 6, 12]), '
                         f"got {_show(v)}")


def _mapping(ctx: _Ctx, path: str, v: Any) -> dict[str, str]:
    if not isinstance(v, dict):
        raise ctx.fail(path, f"expected a table of value = group label, got {_show(v)}")
    for k, x in v.items():
        if not isinstance(x, str):
            raise ctx.fail(f"{path}.{k}", f"expected a group label (string), got {_show(x)}")
    return dict(v)


def _table(ctx: _Ctx, path: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ctx.fail(path, f"expected a table, got {_show(v)}")
    return dict(v)


def _bins(ctx: _Ctx, path: str, v: Any) -> tuple[float, ...]:
    vals = _list(_float(float("-inf"), float("inf")), "numbers (bin edges)")(ctx, path, v)
    if len(vals) < 2 or any(b <= a for a, b in zip(vals, vals[1:])):
        raise ctx.fail(path, f"expected at least two strictly increasing bin edges, got {_show(v)}")
    return vals


def _table_or_list(ctx: _Ctx, path: str, v: Any) -> Any:
    if not isinstance(v, (dict, list)):
        raise ctx.fail(path, f"expected a list of bin edges or a table attribute = [edges], got {_show(v)}")
    return v


def _per_attribute(ctx: _Ctx, path: str, v: Any, attrs: tuple[str, ...], check: Check) -> dict[str, Any]:
    """Normalise ``bins`` / ``mapping``: a per-attribute table, or (one attribute) the bare value."""
    if not v:
        return {}
    nested = isinstance(v, dict) and all(k in attrs for k in v) and all(isinstance(x, (dict, list))
                                                                        for x in v.values())
    if nested:
        return {k: check(ctx, f"{path}.{k}", x) for k, x in v.items()}
    if len(attrs) != 1:
        raise ctx.fail(path, f"with several attributes give one entry per attribute ({', '.join(attrs)}), "
                             f"got {_show(v)}")
    return {attrs[0]: check(ctx, path, v)}


def _read_section(ctx: _Ctx, name: str, data: Any, spec: dict[str, Check], required: tuple[str, ...] = ()
                  ) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ctx.fail(name, f"expected a table, got {_show(data)}")
    data = {k: v for k, v in data.items() if v is not None}  # None (from to_dict()) means "not set"
    unknown = [k for k in data if k not in spec]
    if unknown:
        k = unknown[0]
        hint = difflib.get_close_matches(k, list(spec), n=1, cutoff=0.6)
        sugg = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ctx.fail(f"{name} {k}", f"unknown key{sugg} (allowed: {', '.join(spec)})")
    for k in required:
        if k not in data:
            raise ctx.fail(f"{name} {k}", "required key is missing")
    return {k: spec[k](ctx, f"{name} {k}", v) for k, v in data.items()}


def _resolve(path: str, base: Path | None) -> str:
    p = Path(path).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    return str(p.resolve()) if base is not None or p.is_absolute() else str(p)


_SECTIONS = ("corpus", "groups", "split", "encoders", "extraction", "probes", "analysis", "output", "run",
             "finetune")
_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def _encoder_name(model: str) -> str:
    base = model.rstrip("/").split("/")[-1].split(":")[-1] or "encoder"
    return _NAME_RE.sub("-", base)


def parse_config(data: Mapping[str, Any], *, source: str = "<dict>", base_dir: str | Path | None = None
                 ) -> RunConfig:
    """Validate a parsed TOML document (a dict) into a :class:`RunConfig`.

    ``base_dir`` resolves relative paths (``load_config`` passes the config file's folder).
    """
    ctx = _Ctx(source)
    base = Path(base_dir).resolve() if base_dir is not None else None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a TOML document (table), got {_show(data)}")
    unknown = [k for k in data if k not in _SECTIONS]
    if unknown:
        hint = difflib.get_close_matches(unknown[0], _SECTIONS, n=1, cutoff=0.6)
        sugg = f"; did you mean [{hint[0]}]?" if hint else ""
        raise ConfigError(f"{source}: [{unknown[0]}]: unknown section{sugg} (allowed: {', '.join(_SECTIONS)})")
    for sec in ("corpus", "groups", "encoders"):
        if sec not in data:
            raise ConfigError(f"{source}: [{sec}]: required section is missing")

    c = _read_section(ctx, "[corpus]", data["corpus"],
                      {"kind": _str(CORPUS_KINDS), "root": _str(), "options": _table, "strict": _bool},
                      required=("kind",))
    if c["kind"] != "synthetic" and "root" not in c:
        raise ctx.fail("[corpus] root", f"required for kind {c['kind']!r} (the corpus folder)")
    if "root" in c:
        c["root"] = _resolve(c["root"], base)
    _check_loader_options(ctx, c["kind"], c.get("options", {}))
    corpus = CorpusConfig(**c)

    graw = data["groups"]
    g = _read_section(ctx, "[groups]", graw,
                      {"attribute": _str(), "attributes": _list(_str(), "attribute names"), "bins": _table_or_list,
                       "mapping": _table, "reference": _str(), "min_speakers": _int(1),
                       "missing": _str(("exclude", "group"))})
    if ("attribute" in g) == ("attributes" in g):
        raise ctx.fail("[groups] attribute", "give exactly one of 'attribute' (one speaker attribute) or "
                                             "'attributes' (a list, for intersectional groups)")
    attrs = (g["attribute"],) if "attribute" in g else g["attributes"]
    g["bins"] = _per_attribute(ctx, "[groups] bins", g.get("bins", {}), attrs, _bins)
    g["mapping"] = _per_attribute(ctx, "[groups] mapping", g.get("mapping", {}), attrs, _mapping)
    groups = GroupsConfig(**g)

    split = SplitConfig(**_read_section(ctx, "[split]", data.get("split", {}),
                                        {"use_corpus_split": _bool, "test_fraction": _float(0.0, 1.0),
                                         "seed": _int(0)}))

    encs_raw = data["encoders"]
    if not isinstance(encs_raw, list) or not encs_raw:
        raise ctx.fail("[[encoders]]", "expected one or more [[encoders]] tables (array of tables), got "
                                       f"{_show(encs_raw)}")
    encoders: list[EncoderConfig] = []
    enc_spec: dict[str, Check] = {"model": _str(), "revision": _str(), "name": _str(), "layers": _layers,
                                  "pooling": _str(POOLINGS), "dtype": _str(DTYPES), "device": _str(),
                                  "batch_size": _int(1)}
    for i, raw in enumerate(encs_raw):
        e = _read_section(ctx, f"[[encoders]] #{i + 1}", raw, enc_spec, required=("model",))
        model = e["model"]
        if not model.startswith("tiny:") and (model.startswith((".", "/", "~")) or
                                              (base is not None and (base / model).is_dir())):
            e["model"] = _resolve(model, base)  # a local directory, not a hub id
        e.setdefault("name", _encoder_name(model))
        if not _NAME_RE.sub("", e["name"]) or _NAME_RE.search(e["name"]):
            raise ctx.fail(f"[[encoders]] #{i + 1} name", "use letters, digits, '_', '.', '-' only "
                                                        f"(it names folders and table rows), got {_show(e['name'])}")
        encoders.append(EncoderConfig(**e))
    names = [e.name for e in encoders]
    if len(set(names)) != len(names):
        raise ctx.fail("[[encoders]] name", f"encoder names must be unique, got {names}; set 'name' explicitly")

    p = _read_section(ctx, "[probes]", data.get("probes", {}),
                      {"type": _str(PROBE_TYPES), "populations": _list(_str(POPULATIONS), "population names "
                                                                        f"({', '.join(POPULATIONS)})"),
                       "seeds": _list(_int(0), "integers"), "n_boot": _int(0), "level": _float(0.0, 1.0),
                       "layers": _layers})
    probes = ProbesConfig(**p)

    a = _read_section(ctx, "[analysis]", data.get("analysis", {}),
                      {"spaces": _list(_str(SPACES), f"spaces ({', '.join(SPACES)})"), "n_perm": _int(0),
                       "n_boot": _int(0), "fdr_alpha": _float(0.0, 1.0), "reference": _str()})
    analysis = AnalysisConfig(**a)

    o = _read_section(ctx, "[output]", data.get("output", {}), {"dir": _str()})
    output = OutputConfig(dir=_resolve(o.get("dir", OutputConfig.dir), base))

    run = RunSettings(**_read_section(ctx, "[run]", data.get("run", {}), {"seed": _int(0)}))
    extraction = ExtractionConfig(**_read_section(
        ctx, "[extraction]", data.get("extraction", {}),
        {"backend": _str(BACKENDS), "num_workers": _int(1), "num_gpus_per_worker": _float(0.0, 64.0,
                                                                                          open_ends=False),
         "ray_address": _str()}))
    finetune = _finetune_section(ctx, data["finetune"], base) if data.get("finetune") is not None else None
    return RunConfig(corpus=corpus, groups=groups, encoders=tuple(encoders), split=split, probes=probes,
                     analysis=analysis, output=output, run=run, extraction=extraction, finetune=finetune,
                     source=source)


def _check_loader_options(ctx: _Ctx, kind: str, options: Mapping[str, Any]) -> None:
    """``[corpus.options]`` keys must be keyword options of the loader (or of the synthetic corpus builder)."""
    import inspect

    if kind == "synthetic":
        from phonefair.synth.corpus import build_synthetic_corpus

        params = inspect.signature(build_synthetic_corpus).parameters.values()
        allowed = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in ("overwrite", "progress")]
    else:
        from phonefair.corpus import loader_options

        allowed = loader_options(kind)
    for key in options:
        if key not in allowed:
            hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            sugg = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ctx.fail(f"[corpus.options] {key}", f"not an option of the {kind!r} loader{sugg} "
                                                     f"(options: {', '.join(allowed) or 'none'})")


def _finetune_section(ctx: _Ctx, raw: Any, base: Path | None) -> FinetuneSection:
    if not isinstance(raw, dict):
        raise ctx.fail("[finetune]", f"expected a table, got {_show(raw)}")
    own = {k: raw[k] for k in ("model", "variants", "dir") if k in raw and raw[k] is not None}
    f = _read_section(ctx, "[finetune]", own, {"model": _str(), "variants": _list(_str(), "objective names"),
                                               "dir": _str()}, required=("model",))
    options = {k: v for k, v in raw.items() if k not in ("model", "variants", "dir")}
    if "options" in options and isinstance(options["options"], dict):  # round trip of to_dict()
        options = {**options.pop("options"), **options}
    from phonefair.finetune import FinetuneConfig  # validates option names and values

    try:
        FinetuneConfig.from_dict(dict(options))
    except (TypeError, ValueError) as exc:
        raise ctx.fail("[finetune]", str(exc)) from None
    model = f["model"]
    if model.startswith((".", "/", "~")) or (base is not None and (base / model).is_dir()):
        f["model"] = _resolve(model, base)
    if "dir" in f:
        f["dir"] = _resolve(f["dir"], base)
    return FinetuneSection(options=options, **f)


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a TOML run configuration; relative paths are resolved against its folder."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text: {exc}") from None
    return parse_config(data, source=str(p), base_dir=p.parent)


# ---------------------------------------------------------------------------------------------- presets
def _preset_dir() -> Any:
    return resources.files("phonefair") / "data" / "presets"


def list_presets() -> list[str]:
    """Names of the bundled presets (``phonefair init --preset NAME``)."""
    return sorted(f.name[:-5] for f in _preset_dir().iterdir() if f.name.endswith(".toml"))


def preset_text(name: str) -> str:
    """The TOML text of a bundled preset."""
    names = list_presets()
    if name not in names:
        hint = difflib.get_close_matches(name, names, n=1)
        sugg = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(f"unknown preset {name!r}{sugg} (available: {', '.join(names)})")
    return (_preset_dir() / f"{name}.toml").read_text(encoding="utf-8")


def load_preset(name: str, *, base_dir: str | Path | None = None) -> RunConfig:
    """A bundled preset as a :class:`RunConfig` (relative paths resolved against ``base_dir``)."""
    return parse_config(tomllib.loads(preset_text(name)), source=f"preset {name}", base_dir=base_dir)
