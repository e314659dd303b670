"""The run configuration: one typed, frozen :class:`RunConfig` read from a TOML file.

A config file has the sections ``[corpus]``, ``[groups]``, ``[[encoders]]`` (one table per encoder), and optionally
``[probes]``, ``[analysis]``, ``[baseline]``, ``[extraction]``, ``[split]``, ``[finetune]``, ``[output]`` and ``[run]``;
docs/usage.md is the reference. Each section is one settings dataclass (:mod:`phonefair.settings`,
:class:`phonefair.groups.GroupSpec`) whose fields declare type, default and range once; the checks here are derived
from those declarations, so the Python API and the TOML route accept exactly the same values with the same defaults.
Errors name the file and the key path (``config.toml: [probes] folds: expected an integer >= 2, got 1``) and
unknown keys get a "did you mean" suggestion, because a misspelt key silently falling back to a default is the worst
failure mode.

Relative paths (``[corpus] root``, path-valued loader options such as ``speakers``, ``[output] dir``, a local
encoder directory) are resolved against the config file's folder, never the current directory, so a config plus
its data can be moved together.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

from phonefair.errors import ConfigError
from phonefair.groups import GroupSpec
from phonefair.io import resolve_path
from phonefair.settings import AnalysisSettings, ProbeSettings, Settings, check_value, layer_names, setting

__all__ = [
    "ConfigError", "CorpusSettings", "SplitSettings", "EncoderSettings", "ExtractionSettings", "BaselineSettings",
    "LensSettings",
    "FinetuneSection", "OutputSettings", "RunSettings", "RunConfig", "load_config", "parse_config", "list_presets",
    "preset_text", "load_preset", "CORPUS_KINDS", "settings_reference",
]

CORPUS_KINDS = ("timit", "l2arctic", "buckeye", "textgrid", "lhotse", "saved", "synthetic")


# ---------------------------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class CorpusSettings(Settings):
    """``[corpus]``: which loader reads the data (``phonefair.corpus.load_corpus(kind, root, **options)``)."""

    section: ClassVar[str] = "[corpus]"

    kind: Literal["timit", "l2arctic", "buckeye", "textgrid", "lhotse", "saved", "synthetic"] = setting(
        "synthetic", "corpus loader")
    root: str | None = setting(None, "corpus folder (not for kind = synthetic)", path=True)
    options: Mapping[str, Any] = setting({}, "keyword options of the loader, checked against its signature")
    strict: bool = setting(False, "stop on validation errors instead of reporting the excluded items")
    check_audio: Literal["content", "headers"] = setting(
        "content", "validation reads every sample (NaN/inf, silence, length) or only the file headers (huge corpora)")

    def validate(self) -> None:
        if self.kind != "synthetic" and self.root is None:
            raise self.fail("root", f"required for kind {self.kind!r} (the corpus folder)")


@dataclass(frozen=True)
class SplitSettings(Settings):
    """``[split]``: the speaker-disjoint train/test split used by fine-tuning (the audit itself cross-fits over
    speaker folds and tests every speaker, see ``[probes] folds``)."""

    section: ClassVar[str] = "[split]"

    use_corpus_split: bool = setting(False, "fine-tune on the corpus's own train split when it has one")
    test_fraction: float = setting(0.3, "share of each group's speakers held out of fine-tuning", min=0.0, max=1.0,
                                   open=True)
    seed: int = setting(0, "seed of the split", min=0)


@dataclass(frozen=True)
class EncoderSettings(Settings):
    """One ``[[encoders]]`` table: a Hugging Face id, a local model directory, ``tiny:<family>`` (random, for tests),
    ``ct2:<dir>`` / ``bundled:whisper-tiny.en`` (CTranslate2 Whisper) or ``acoustic`` (log-mel / MFCC baseline)."""

    section: ClassVar[str] = "[[encoders]]"

    model: str = setting("tiny:wav2vec2", "model id, local directory or special name")
    name: str | None = setting(None, "short name for tables and folders (default: derived from model)")
    revision: str | None = setting(None, "hub revision; pin a commit sha for published results")
    layers: str | tuple[str, ...] = setting("all", 'layers to extract: "all", "0-4,8" or a list')
    pooling: Literal["mean", "center", "middle_third"] = setting("mean", "frames -> one vector per phone")
    dtype: Literal["float16", "float32"] = setting("float16", "storage dtype of the embeddings")
    compute_dtype: Literal["float32", "bfloat16", "float16"] = setting(
        "float32", "dtype of the forward pass (bfloat16: ~2x faster on CPUs with AMX / on GPUs; part of the store key)")
    device: str = setting("auto", 'forward-pass device: "auto", "cpu", "cuda", "cuda:1"')
    batch_size: int = setting(8, "utterances per forward batch", min=1)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", layer_names(self.layers))
        super().__post_init__()

    def validate(self) -> None:
        if self.name is not None and (not _NAME_RE.sub("", self.name) or _NAME_RE.search(self.name)):
            raise self.fail("name", "use letters, digits, '_', '.', '-' only (it names folders and table rows), "
                                    f"got {self.name!r}")
        if self.model.startswith("tiny:") and not re.fullmatch(r"[A-Za-z0-9_-]+", self.model[5:]):
            raise self.fail("model", f"tiny:<family> takes a family name (e.g. tiny:wav2vec2), got {self.model!r}")
        if self.name is None:  # the encoder's name in tables, folders and the report
            object.__setattr__(self, "name", encoder_name(self.model))


@dataclass(frozen=True)
class ExtractionSettings(Settings):
    """``[extraction]``: where the forward passes run (docs/scaleout.md). Every backend writes the same store."""

    section: ClassVar[str] = "[extraction]"

    backend: Literal["local", "ray"] = setting("local", "one process, or Ray Data actors")
    num_workers: int = setting(1, "Ray: encoder actors", min=1)
    num_gpus_per_worker: float = setting(0.0, "Ray: GPUs per actor (0 on CPU clusters)", min=0.0, max=64.0)
    ray_address: str | None = setting(None, "Ray: cluster address (default: start or join a local runtime)")
    on_audio_error: Literal["skip", "raise"] = setting(
        "skip", "unreadable or unusable audio: NaN rows + a reported problem, or stop the run")


@dataclass(frozen=True)
class BaselineSettings(Settings):
    """``[baseline]``: the acoustic baseline audited beside every encoder (docs/baselines.md)."""

    section: ClassVar[str] = "[baseline]"

    enabled: bool = setting(True, "audit an acoustic baseline (log-mel / MFCC) beside the encoders")
    model: str = setting("acoustic", "the baseline's encoder spec")


@dataclass(frozen=True)
class LensSettings(Settings):
    """``[lenses]``: group- and speaker-identity probes per layer and the dimensions that carry group identity
    (docs/lenses.md). ``options`` are :class:`phonefair.probes.identity.IdentitySettings` fields."""

    section: ClassVar[str] = "[lenses]"

    enabled: bool = setting(True, "run the identity lenses for every encoder (not the acoustic baseline)")
    options: Mapping[str, Any] = setting({}, "IdentitySettings fields, e.g. n_perm = 999, per_phone = true")

    def validate(self) -> None:
        from phonefair.probes.identity import IdentitySettings

        try:
            IdentitySettings(**dict(self.options))
        except (TypeError, ValueError) as exc:
            raise self.fail("options", str(exc)) from None


@dataclass(frozen=True)
class OutputSettings(Settings):
    """``[output]``: where every result goes."""

    section: ClassVar[str] = "[output]"

    dir: str = setting("phonefair-out", "output folder", path=True)
    figures: tuple[Literal["png", "svg", "pdf"], ...] = setting(
        ("png", "svg", "pdf"), "files written per report figure under figures/ (PNG always: the report embeds it)")


@dataclass(frozen=True)
class RunSettings(Settings):
    """``[run]``: global settings."""

    section: ClassVar[str] = "[run]"

    seed: int = setting(0, "seed of every random stream of the run", min=0)


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
class RunConfig:
    """A validated run configuration. Build with :func:`load_config` or :func:`parse_config`."""

    corpus: CorpusSettings
    groups: GroupSpec
    encoders: tuple[EncoderSettings, ...]
    split: SplitSettings = field(default_factory=SplitSettings)
    probes: ProbeSettings = field(default_factory=ProbeSettings)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    baseline: BaselineSettings = field(default_factory=BaselineSettings)
    lenses: LensSettings = field(default_factory=LensSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    run: RunSettings = field(default_factory=RunSettings)
    extraction: ExtractionSettings = field(default_factory=ExtractionSettings)
    finetune: FinetuneSection | None = None
    source: str = "<dict>"  # the file it came from (not part of the settings)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable settings (for provenance and cache keys); ``source`` is left out.
        The result is itself a valid document for :func:`parse_config`."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "source":
                continue
            if f.name == "encoders":
                out[f.name] = [e.to_dict() for e in v]
            elif f.name == "finetune":
                out[f.name] = None if v is None else {"model": v.model, "variants": list(v.variants),
                                                      "dir": v.dir, **dict(v.options)}
            else:
                out[f.name] = v.to_dict()
        return out

    @property
    def out_dir(self) -> Path:
        return Path(self.output.dir)

    def replace_output(self, out_dir: str | Path) -> RunConfig:
        """A copy writing to another output folder."""
        return dataclasses.replace(self, output=dataclasses.replace(self.output, dir=str(Path(out_dir).resolve())))


_SECTIONS = ("corpus", "groups", "split", "encoders", "extraction", "probes", "analysis", "baseline", "lenses",
             "output", "run", "finetune")
_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def encoder_name(model: str) -> str:
    """A folder-safe short name derived from a model spec (``facebook/wav2vec2-base`` → ``wav2vec2-base``)."""
    base = model.rstrip("/").split("/")[-1].split(":")[-1] or "encoder"
    return _NAME_RE.sub("-", base)


def _is_local_model(model: str, base: Path | None) -> bool:
    if model == "acoustic" or model.startswith(("tiny:", "bundled:", "acoustic:")):
        return False
    return model.startswith((".", "/", "~")) or (base is not None and (base / model).is_dir())


def parse_config(data: Mapping[str, Any], *, source: str = "<dict>", base_dir: str | Path | None = None
                 ) -> RunConfig:
    """Validate a parsed TOML document (a dict) into a :class:`RunConfig`.

    ``base_dir`` resolves relative paths (``load_config`` passes the config file's folder).
    """
    base = Path(base_dir).resolve() if base_dir is not None else None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a TOML document (table), got {type(data).__name__}")
    unknown = [k for k in data if k not in _SECTIONS]
    if unknown:
        hint = difflib.get_close_matches(unknown[0], _SECTIONS, n=1, cutoff=0.6)
        sugg = f"; did you mean [{hint[0]}]?" if hint else ""
        raise ConfigError(f"{source}: [{unknown[0]}]: unknown section{sugg} (allowed: {', '.join(_SECTIONS)})")
    for sec in ("corpus", "groups", "encoders"):
        if sec not in data:
            raise ConfigError(f"{source}: [{sec}]: required section is missing")

    corpus = CorpusSettings.from_mapping(data["corpus"], where=source, base_dir=base, required=("kind",))
    corpus = dataclasses.replace(corpus, options=check_loader_options(corpus.kind, corpus.options, base,
                                                                       where=source))
    groups = GroupSpec.from_mapping(data["groups"], where=source)

    encs_raw = data["encoders"]
    if not isinstance(encs_raw, list) or not encs_raw:
        raise ConfigError(f"{source}: [[encoders]]: expected one or more [[encoders]] tables (array of tables), "
                          f"got {encs_raw!r}")
    encoders: list[EncoderSettings] = []
    for i, raw in enumerate(encs_raw):
        where = f"{source}: [[encoders]] #{i + 1}"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: expected a table, got {raw!r}")
        raw = dict(raw)
        model = raw.get("model")
        if isinstance(model, str) and model.startswith("ct2:") and base is not None:
            raw["model"] = "ct2:" + resolve_path(model[4:], base)  # a CTranslate2 checkpoint folder
        elif isinstance(model, str) and _is_local_model(model, base):
            raw["model"] = resolve_path(model, base)  # a local directory, not a hub id
        try:
            enc = EncoderSettings.from_mapping(raw, required=("model",))
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("[[encoders]]", where, 1)) from None
        encoders.append(enc)
    names = [str(e.name) for e in encoders]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: [[encoders]] name: encoder names must be unique, got {names}; set 'name'")

    kw: dict[str, Any] = {}
    for name, cls in (("split", SplitSettings), ("probes", ProbeSettings), ("analysis", AnalysisSettings),
                      ("baseline", BaselineSettings), ("lenses", LensSettings), ("output", OutputSettings),
                      ("run", RunSettings),
                      ("extraction", ExtractionSettings)):
        kw[name] = cls.from_mapping(data.get(name), where=source, base_dir=base)
    if "output" not in data or "dir" not in (data.get("output") or {}):
        kw["output"] = OutputSettings(dir=resolve_path(OutputSettings().dir, base))
    finetune = _finetune_section(source, data["finetune"], base) if data.get("finetune") is not None else None
    return RunConfig(corpus=corpus, groups=groups, encoders=tuple(encoders), finetune=finetune, source=source, **kw)


def check_loader_options(kind: str, options: Mapping[str, Any], base: Path | None, *, where: str = ""
                         ) -> dict[str, Any]:
    """``[corpus.options]``: keys must be keyword options of the loader (or of the synthetic corpus builder), values
    must match the loader's annotations (``mix = "no"`` is not a boolean), and path-valued options are resolved
    against the config file's folder."""
    import inspect

    if kind == "synthetic":
        from phonefair.synth.corpus import build_synthetic_corpus as fn

        skip = ("overwrite", "progress")
    else:
        from phonefair.corpus import loader_function

        fn, skip = loader_function(kind), ()
    params = {p.name: p for p in inspect.signature(fn).parameters.values()
              if p.kind is p.KEYWORD_ONLY and p.name not in skip}
    hints = typing.get_type_hints(fn)
    prefix = f"{where}: " if where else ""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in params:
            hint = difflib.get_close_matches(key, list(params), n=1, cutoff=0.6)
            sugg = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"{prefix}[corpus.options] {key}: not an option of the {kind!r} loader{sugg} "
                              f"(options: {', '.join(params) or 'none'})")
        tp = hints.get(key, Any)
        is_path = "PathLike" in str(tp)
        if is_path:
            if isinstance(value, str):
                out[key] = resolve_path(value, base) if base is not None else value
                continue
            if value is not None or "None" not in str(tp):
                raise ConfigError(f"{prefix}[corpus.options] {key}: expected a path (a string), got {value!r}")
        try:
            out[key] = _check_option(tp, value)
        except ValueError as exc:
            raise ConfigError(f"{prefix}[corpus.options] {key}: {exc}") from None
    if "phone_scheme" in out:
        from phonefair.corpus.phonesets import SCHEMES

        if out["phone_scheme"] not in SCHEMES:
            hint = difflib.get_close_matches(str(out["phone_scheme"]), SCHEMES, n=1)
            sugg = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{prefix}[corpus.options] phone_scheme: expected one of {list(SCHEMES)}, got "
                              f"{out['phone_scheme']!r}{sugg}")
    return out


def _check_option(tp: Any, value: Any) -> Any:
    """Check a loader option against its annotation; types the settings checker does not know pass through."""
    from phonefair.settings import InvalidValue

    args = typing.get_args(tp)
    known = (bool, int, float, str)
    simple = tp in known or typing.get_origin(tp) is Literal or (
        typing.get_origin(tp) in (typing.Union, __import__("types").UnionType)
        and all(a in known or a is type(None) or typing.get_origin(a) is Literal for a in args))
    if not simple:
        return value
    try:
        return check_value(tp, value)
    except InvalidValue as exc:
        raise ValueError(exc.msg) from None


def _finetune_section(source: str, raw: Any, base: Path | None) -> FinetuneSection:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: [finetune]: expected a table, got {raw!r}")
    own = {k: raw[k] for k in ("model", "variants", "dir") if k in raw and raw[k] is not None}
    if "model" not in own:
        raise ConfigError(f"{source}: [finetune] model: required key is missing")
    for k in ("model", "dir"):
        if k in own and (not isinstance(own[k], str) or not own[k].strip()):
            raise ConfigError(f"{source}: [finetune] {k}: expected a non-empty string, got {own[k]!r}")
    if "variants" in own:
        v = own["variants"]
        if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
            raise ConfigError(f"{source}: [finetune] variants: expected a non-empty list of objective names, "
                              f"got {v!r}")
        own["variants"] = tuple(v)
    options = {k: v for k, v in raw.items() if k not in ("model", "variants", "dir")}
    if "options" in options and isinstance(options["options"], Mapping):  # round trip of to_dict()
        options = {**options.pop("options"), **options}
    from phonefair.finetune import FinetuneConfig  # validates option names and values

    try:
        FinetuneConfig.from_dict(dict(options))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: [finetune]: {exc}") from None
    if _is_local_model(own["model"], base):
        own["model"] = resolve_path(own["model"], base)
    if "dir" in own and base is not None:
        own["dir"] = resolve_path(own["dir"], base)
    return FinetuneSection(options=options, **own)


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


def settings_reference() -> str:
    """The Markdown table of every TOML setting, generated from the settings dataclasses (docs/usage.md holds this
    table between ``<!-- settings:begin -->`` and ``<!-- settings:end -->``; a test keeps them equal)."""
    import dataclasses

    from phonefair.settings import describe_type

    classes: list[type[Settings]] = [CorpusSettings, GroupSpec, SplitSettings, EncoderSettings, ExtractionSettings,
                                     ProbeSettings, AnalysisSettings, BaselineSettings, LensSettings, OutputSettings,
                                     RunSettings]
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for cls in classes:
        hints = typing.get_type_hints(cls)
        docs = cls.docs()
        defaults = cls.defaults()
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            default = defaults.get(f.name, "(required)")
            shown = "(required)" if default == "(required)" else "none" if default is None else \
                f"`{_toml(default)}`"
            meaning = docs[f.name].replace("|", "\\|")
            lines.append(f"| `{cls.section} {f.name}` | {describe_type(hints[f.name])} | {shown} | {meaning} |")
    return "\n".join(lines) + "\n"


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + "}"
    return str(v)
