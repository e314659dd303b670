"""Settings: one frozen dataclass per stage, shared by the Python API and the TOML configuration.

Each setting is declared once, with its type, default, range and one line of documentation::

    class ProbeSettings(Settings):
        folds: int = setting(5, "speaker folds for cross-fitting", min=2)

The checks are *derived* from those declarations — the annotation gives the type (``int``, ``float``, ``bool``,
``str``, ``Literal[...]`` choices, ``tuple[T, ...]`` lists, ``X | None``), the metadata gives ranges — and run in
``__post_init__``. So ``ProbeSettings(folds=1)`` from Python and ``folds = 1`` in a TOML file fail with the same
message, and a default lives in exactly one place. :meth:`Settings.from_toml` adds what only a file needs: unknown
keys with a "did you mean" suggestion, lists turned into tuples, and the file/section path in every message.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

from phonefair.errors import ConfigError

__all__ = ["Settings", "setting", "check_value", "coerce", "ProbeSettings", "AnalysisSettings",
           "PROBE_KINDS", "POPULATIONS", "SPACES"]

S = TypeVar("S", bound="Settings")

PROBE_KINDS = ("linear", "mlp")
POPULATIONS = ("pooled", "group", "leave_out")
SPACES = ("raw", "lda")


def setting(default: Any, doc: str, *, min: float | None = None, max: float | None = None,
            open: bool = False, nonempty: bool = True, unique: bool = True, path: bool = False) -> Any:
    """Declare one setting: its default, a one-line description and, for numbers, a range.

    ``min``/``max`` bound a number (or every item of a tuple of numbers); ``open`` makes the bounds exclusive.
    ``nonempty``/``unique`` apply to tuples. ``path`` marks a filesystem path, resolved against the config file's
    folder when read from TOML.
    """
    meta = {"doc": doc, "min": min, "max": max, "open": open, "nonempty": nonempty, "unique": unique, "path": path}
    if isinstance(default, (list, set)):
        raise TypeError("mutable defaults: use a tuple")
    if isinstance(default, Mapping):
        frozen = dict(default)
        return field(default_factory=lambda: dict(frozen), metadata=meta)
    return field(default=default, metadata=meta)


def layer_names(v: Any) -> Any:
    """Layer selections may name hidden states by number (``layers = [0, 6, 12]``): numbers become names."""
    if isinstance(v, (list, tuple)):
        return tuple(str(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in v)
    if isinstance(v, int) and not isinstance(v, bool):
        return (str(v),)
    return v


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def describe_type(tp: Any) -> str:
    """A setting's type in words (error messages and the settings reference)."""
    origin = get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a non-empty string"
    if origin is Literal:
        return f"one of {list(get_args(tp))}"
    if origin is tuple:
        return f"a list of {describe_type(get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(a) for a in get_args(tp) if a is not type(None))
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        return "a table"
    return getattr(tp, "__name__", str(tp))


class InvalidValue(ValueError):
    """A value does not match a type; ``msg`` is the complete explanation."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


def _range(v: float, meta: Mapping[str, Any]) -> None:
    lo, hi, open_ = meta.get("min"), meta.get("max"), meta.get("open", False)
    if lo is None and hi is None:
        return
    ok = (lo is None or (v > lo if open_ else v >= lo)) and (hi is None or (v < hi if open_ else v <= hi))
    if not ok:
        if lo is not None and hi is not None:
            rng = f"in {'(' if open_ else '['}{lo}, {hi}{')' if open_ else ']'}"
        elif lo is not None:
            rng = f"{'>' if open_ else '>='} {lo}"
        else:
            rng = f"{'<' if open_ else '<='} {hi}"
        raise InvalidValue(f"expected a number {rng}, got {_show(v)}")


def check_value(tp: Any, v: Any, meta: Mapping[str, Any] | None = None) -> Any:
    """Check ``v`` against the annotation ``tp`` (and range metadata); return it normalised (lists → tuples,
    ints → floats where a float is expected). Raises :class:`InvalidValue` with the explanation."""
    meta = meta or {}
    origin = get_origin(tp)
    if tp is Any:
        return v
    if origin in (Union, types.UnionType):
        alts = get_args(tp)
        if v is None and type(None) in alts:
            return None
        errors = []
        for a in alts:
            if a is type(None):
                continue
            try:
                return check_value(a, v, meta)
            except InvalidValue as exc:
                errors.append(exc.msg)
        if len(errors) == 1:
            raise InvalidValue(errors[0])
        raise InvalidValue(f"expected {describe_type(tp)}, got {_show(v)}")
    if tp is bool:
        if not isinstance(v, bool):
            raise InvalidValue(f"expected true or false, got {_show(v)}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise InvalidValue(f"expected an integer, got {_show(v)}")
        _range(v, meta)
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InvalidValue(f"expected a number, got {_show(v)}")
        _range(float(v), meta)
        return float(v)
    if tp is str:
        if not isinstance(v, str) or not v.strip():
            raise InvalidValue(f"expected a non-empty string, got {_show(v)}")
        return v
    if origin is Literal:
        choices = get_args(tp)
        if v not in choices or isinstance(v, bool):
            hint = difflib.get_close_matches(str(v), [str(c) for c in choices], n=1) if isinstance(v, str) else []
            sugg = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise InvalidValue(f"expected one of {list(choices)}, got {_show(v)}{sugg}")
        return v
    if origin is tuple:
        item_tp = get_args(tp)[0]
        if not isinstance(v, (list, tuple)) or (meta.get("nonempty", True) and not v):
            what = "non-empty " if meta.get("nonempty", True) else ""
            raise InvalidValue(f"expected a {what}{describe_type(tp).removeprefix('a ')}, got {_show(v)}")
        out = []
        for i, x in enumerate(v):
            try:
                out.append(check_value(item_tp, x, meta))
            except InvalidValue as exc:
                raise InvalidValue(f"expected {describe_type(tp)}, got {_show(list(v))} (item {i}: {exc.msg})") from None
        if meta.get("unique", True) and len(set(out)) != len(out):
            raise InvalidValue(f"list has duplicates: {_show(list(v))}")
        return tuple(out)
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        if not isinstance(v, Mapping):
            raise InvalidValue(f"expected a table, got {_show(v)}")
        return dict(v)
    if isinstance(tp, type) and isinstance(v, tp):
        return v
    raise InvalidValue(f"expected {describe_type(tp)}, got {_show(v)}")


@dataclass(frozen=True)
class Settings:
    """Base of every settings dataclass: checks every field against its declaration on construction."""

    #: the TOML section name, for messages (``[probes]``)
    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            try:
                v = check_value(hints[f.name], getattr(self, f.name), f.metadata)
            except InvalidValue as exc:
                raise ConfigError(f"{self.section or type(self).__name__} {f.name}: {exc.msg}") from None
            object.__setattr__(self, f.name, v)
        self.validate()

    def validate(self) -> None:
        """Checks across fields (override); raise :class:`ConfigError` via :meth:`fail`."""

    def fail(self, name: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.section or type(self).__name__} {name}: {msg}")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.init]

    @classmethod
    def docs(cls) -> dict[str, str]:
        """``{key: one-line description}`` (for docs and ``phonefair init`` comments)."""
        return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls) if f.init}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(cls):
            if f.init and f.default is not MISSING:
                out[f.name] = f.default
            elif f.init and f.default_factory is not MISSING:
                out[f.name] = f.default_factory()
        return out

    @classmethod
    def from_mapping(cls: type[S], data: Mapping[str, Any] | None, *, where: str = "", base_dir: Any = None,
                     required: tuple[str, ...] = ()) -> S:
        """Build from a parsed TOML table: unknown keys get a suggestion, ``None`` means "not set", paths are
        resolved against ``base_dir``; every error names ``where`` (``config.toml: [probes] folds: ...``)."""
        prefix = f"{where}: " if where else ""
        sect = cls.section or cls.__name__
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{prefix}{sect}: expected a table, got {_show(data)}")
        allowed = cls.keys()
        data = {k: v for k, v in data.items() if v is not None}
        for k in data:
            if k not in allowed:
                hint = difflib.get_close_matches(k, allowed, n=1, cutoff=0.6)
                sugg = f"; did you mean {hint[0]!r}?" if hint else ""
                raise ConfigError(f"{prefix}{sect} {k}: unknown key{sugg} (allowed: {', '.join(allowed)})")
        for k in required:
            if k not in data:
                raise ConfigError(f"{prefix}{sect} {k}: required key is missing")
        if base_dir is not None:
            from phonefair.io import resolve_path

            for f in dataclasses.fields(cls):
                if f.metadata.get("path") and isinstance(data.get(f.name), str):
                    data[f.name] = resolve_path(data[f.name], base_dir)
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{prefix}{exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples → lists) for provenance and cache keys."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init}

    def replace(self: S, **changes: Any) -> S:
        return dataclasses.replace(self, **changes)


def _plain(x: Any) -> Any:
    if isinstance(x, Settings):
        return x.to_dict()
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def coerce(cls: type[S], value: S | Mapping[str, Any] | None) -> S:
    """Accept a settings object, a plain mapping of its fields, or ``None`` (defaults)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls.from_mapping(value)
    raise ConfigError(f"expected {cls.__name__} or a mapping of its fields, got {type(value).__name__}")


# ---------------------------------------------------------------------------------------------- audit settings
@dataclass(frozen=True)
class ProbeSettings(Settings):
    """``[probes]``: how the phone probes are trained (docs/probes.md)."""

    section: ClassVar[str] = "[probes]"

    type: Literal["linear", "mlp"] = setting("linear", "probe: multinomial logistic regression or one-hidden-layer MLP")
    populations: tuple[Literal["pooled", "group", "leave_out"], ...] = setting(
        ("pooled", "group"), "size-matched training populations besides the all-speaker probe", nonempty=False)
    folds: int = setting(5, "speaker folds for cross-fitting: every speaker is tested once per repeat", min=2)
    repeats: int = setting(1, "cross-fitting repeats with new fold assignments (averaged)", min=1)
    l2_grid: tuple[float, ...] = setting((1e-4, 1e-3, 1e-2, 1e-1),
                                         "L2 strengths searched on held-out training speakers", min=0.0)
    layers: str | tuple[str, ...] = setting("all", 'layers to probe: "all" or a list of layer names')
    exclude_phones: tuple[str, ...] = setting(("sil",), "phone labels left out of every analysis", nonempty=False)
    threads: int = setting(0, "torch threads for probe fitting; 0 = auto (1 when the machine is busy)", min=0)
    device: str = setting("auto", 'probe device: "auto", "cpu" or "cuda"')

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", layer_names(self.layers))
        super().__post_init__()

    def validate(self) -> None:
        if isinstance(self.layers, str) and self.layers != "all":
            raise self.fail("layers", f'expected "all" or a list of layer names, got {_show(self.layers)}')


@dataclass(frozen=True)
class AnalysisSettings(Settings):
    """``[analysis]``: the statistics of the verdicts and the typology (docs/typology.md)."""

    section: ClassVar[str] = "[analysis]"

    alpha: float = setting(0.05, "family-wise error rate of the verdicts (served worse? why?)", min=0.0, max=1.0,
                           open=True)
    fdr_alpha: float = setting(0.05, "false discovery rate of the descriptive per-layer/per-phone tests", min=0.0,
                               max=1.0, open=True)
    level: float = setting(0.95, "confidence level of every interval", min=0.0, max=1.0, open=True)
    n_perm: int = setting(9999, "maximum permutations per test (adaptive: fewer where p is clearly large)", min=19)
    n_boot: int = setting(1000, "speaker-bootstrap replicates for intervals without a closed form", min=10)
    spaces: tuple[Literal["raw", "lda"], ...] = setting(("raw", "lda"), "embedding spaces of the shift tests")

