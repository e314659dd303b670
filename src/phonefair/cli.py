"""The ``phonefair`` command: a thin shell over :mod:`phonefair.pipeline` and :mod:`phonefair.config`.

Exit codes: 0 ok, 1 analysis/run failure, 2 usage or configuration error, 3 data/validation error. Errors print
one line (``phonefair: error: ...``); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from phonefair.errors import EXIT_DATA, EXIT_OK, EXIT_RUN, EXIT_USAGE

_EXTRACT_EPILOG = """
  phonefair extract my.toml --backend ray --num-workers 4        # Ray Data actors (pip install 'phonefair[ray]')
  phonefair extract my.toml --shard 3 --num-shards 8             # one SLURM array task; then: phonefair merge
"""

_EPILOG = """\
examples:
  phonefair demo --out demo-out          # synthetic speech + real Whisper tiny.en (phonefair[demo]) or a tiny random model
  phonefair init --preset timit > my.toml
  phonefair validate my.toml             # check the config and the corpus before a long run
  phonefair run my.toml                  # everything; a rerun skips finished stages
  phonefair probe my.toml                # only up to the probes (extraction reused if cached)
  phonefair validate --kind textgrid --root data/my-corpus
  phonefair align recordings/ --out aligned   # audio + transcripts -> TextGrids (forced alignment)

exit codes: 0 ok, 1 run failure, 2 usage/config error, 3 data/validation error.
Configuration reference: docs/usage.md (presets: phonefair init --list).
"""


class _Parser(argparse.ArgumentParser):
    """argparse exits with code 2 on usage errors already; keep that, but route through main()."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def _version() -> str:
    from phonefair import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(prog="phonefair", formatter_class=fmt, epilog=_EPILOG,
                description="Why do self-supervised speech encoders serve some speaker groups worse? "
                            "Phone-level probes per group, random-vs-systematic error typology, HTML report.")
    p.add_argument("--version", action="version", version=f"phonefair {_version()}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def cmd(name: str, help: str, epilog: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog=epilog, formatter_class=fmt)

    r = cmd("run", "Run every stage for CONFIG (corpus → groups → extract → probe → analyze → report).",
            "example:\n  phonefair run my.toml --stages corpus,groups,extract,probe,report\n"
            "Finished stages are cached under [output] dir and skipped on a rerun.")
    r.add_argument("config", type=Path, help="TOML run configuration (phonefair init --preset NAME > my.toml)")
    r.add_argument("--stages", help="comma-separated subset of: corpus,groups,extract,probe,analyze,report")
    r.add_argument("--out", type=Path, help="override [output] dir")

    d = cmd("demo", "Synthetic multi-accent corpus through every stage, with the real Whisper tiny.en when "
                    "phonefair[demo] is installed (else a tiny random wav2vec2). Shows the machinery, not a finding.",
            "example:\n  phonefair demo --out demo-out\n  phonefair demo --model tiny --quick   # the fast path")
    d.add_argument("--out", type=Path, default=Path("phonefair-demo"), help="output folder (default: %(default)s)")
    d.add_argument("--model", choices=("auto", "real", "tiny"), default="auto",
                   help="auto: the real Whisper tiny.en if installed, else the tiny random wav2vec2")
    d.add_argument("--quick", action="store_true", help="fewer speakers, resamples and features (about half a minute)")

    v = cmd("validate", "Check a config and its corpus (or a corpus folder) and print the problems found.",
            "examples:\n  phonefair validate my.toml\n  phonefair validate --kind timit --root data/TIMIT "
            "--group-by dialect\n  phonefair validate --kind textgrid --root data/mfa-out --option phone_scheme=mfa_ipa\n"
            "exit code 3 when a problem of severity 'error' was found (items the loader had to exclude).")
    v.add_argument("config", type=Path, nargs="?", help="TOML run configuration")
    v.add_argument("--kind", help="corpus kind (timit, l2arctic, buckeye, textgrid, lhotse, saved)")
    v.add_argument("--root", type=Path, help="corpus folder")
    v.add_argument("--group-by", help="speaker attribute to check group sizes for")
    v.add_argument("--min-speakers", type=int, default=5, help="minimum speakers per group (default: 5)")
    v.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="loader option, repeatable (e.g. --option phone_scheme=mfa_ipa --option mix=true)")
    v.add_argument("--headers-only", action="store_true",
                   help="check audio headers only, not the samples (NaN/inf, silence): for huge corpora")

    s = cmd("synth", "Build a synthetic multi-accent corpus (espeak-ng) in OUT.",
            "example:\n  phonefair synth synth-out --speakers-per-group 6 --sentences-per-speaker 8")
    s.add_argument("out", type=Path, help="output folder")
    s.add_argument("--speakers-per-group", type=int, default=6)
    s.add_argument("--sentences-per-speaker", type=int, default=6)
    s.add_argument("--accents", help="comma-separated accent names (default: the synthesiser's set)")
    s.add_argument("--seed", type=int, default=0)

    for name, stage, helptext in [("extract", "extract", "Load the corpus, assign groups and extract embeddings."),
                                  ("probe", "probe", "Run up to the per-group probes."),
                                  ("analyze", "analyze", "Run the random-vs-systematic typology (reuses "
                                                         "probes when cached)."),
                                  ("report", "report", "Render report.html from the cached results.")]:
        c = cmd(name, helptext, f"example:\n  phonefair {name} my.toml" + (_EXTRACT_EPILOG if name == "extract" else ""))
        c.add_argument("config", type=Path, help="TOML run configuration")
        c.add_argument("--out", type=Path, help="override [output] dir")
        if name == "extract":
            c.add_argument("--backend", choices=("local", "ray"), help="override [extraction] backend")
            c.add_argument("--num-workers", type=int, help="Ray: number of encoder actors")
            c.add_argument("--shard", type=int, help="static sharding: this shard's index (0-based)")
            c.add_argument("--num-shards", type=int, help="static sharding: number of shards")
        c.set_defaults(stages={"extract": ["corpus", "groups", "extract"],
                               "probe": ["corpus", "groups", "probe"],
                               "analyze": ["corpus", "groups", "probe", "analyze"],
                               "report": ["corpus", "groups", "report"]}[stage])

    m = cmd("merge", "Assemble and verify the stores written by 'extract --shard i --num-shards N'.",
            "example:\n  phonefair merge my.toml --num-shards 8")
    m.add_argument("config", type=Path, help="TOML run configuration")
    m.add_argument("--num-shards", type=int, required=True, help="number of shards that were extracted")
    m.add_argument("--out", type=Path, help="override [output] dir")

    f = cmd("finetune", "Fairness fine-tuning ([finetune] section): CTC, adversarial and domain-enhancing "
                        "variants, phone error rate per group.",
            "example:\n  phonefair finetune my.toml\nthen list <dir>/<variant>/model under [[encoders]] and run "
            "'phonefair compare'.")
    f.add_argument("config", type=Path, help="TOML run configuration with a [finetune] section")
    f.add_argument("--out", type=Path, help="override [output] dir")

    k = cmd("compare", "Before/after audit of two [[encoders]] (e.g. original vs fine-tuned): change in accuracy, "
                       "gap, in-group benefit and variance with paired CIs.",
            "example:\n  phonefair compare my.toml --before wav2vec2-base --after wav2vec2-base-adversarial")
    k.add_argument("config", type=Path, help="TOML run configuration listing both encoders")
    k.add_argument("--before", required=True, help="encoder name of the original model")
    k.add_argument("--after", required=True, action="append",
                   help="encoder name of a fine-tuned model (repeat for several variants)")
    k.add_argument("--out", type=Path, help="override [output] dir")

    a = cmd("align", "Force-align audio + transcripts (a CSV/TSV table, a Common Voice folder, or a folder of audio "
                     "+ .lab/.txt) into a phonefair corpus: one TextGrid per utterance, a speaker table, alignment "
                     "quality and problems tables.",
            "examples:\n  phonefair align cv-corpus-17.0/en --out cv-aligned --jobs 4          # Common Voice, "
            "pocketsphinx\n  phonefair align recordings/ --speakers speakers.csv --out aligned\n"
            "  phonefair align utterances.tsv --backend ctc --model wav2vec2-xlsr-53-espeak-cv-ft --language fr "
            "--out fr-aligned\nthen: phonefair validate --kind textgrid --root aligned --option "
            "speakers=aligned/speakers.csv\nA rerun resumes (finished utterances are skipped). See docs/align.md.")
    a.add_argument("input", type=Path, help="input table, Common Voice folder / clip TSV, or audio folder")
    a.add_argument("--out", type=Path, required=True, help="output folder (the aligned corpus)")
    a.add_argument("--kind", choices=("auto", "table", "common_voice", "folder"), default="auto",
                   help="input layout (default: detected)")
    a.add_argument("--speakers", type=Path, help="speaker table for folder input")
    a.add_argument("--backend", choices=("pocketsphinx", "ctc"), default="pocketsphinx",
                   help="aligner (default: %(default)s, English, offline)")
    a.add_argument("--model", type=Path, help="ctc: local CTC phoneme checkpoint or phonefair finetune folder")
    a.add_argument("--language", default="en-US", help="espeak-ng voice for pronunciations (default: %(default)s)")
    a.add_argument("--jobs", type=int, default=1, help="worker processes (default: %(default)s)")
    a.add_argument("--device", default="cpu", help="ctc: torch device, e.g. cuda (default: %(default)s)")
    a.add_argument("--no-resume", action="store_true", help="align every utterance again")
    a.add_argument("--copy-audio", action="store_true", help="copy the audio instead of linking to it")
    a.add_argument("--column", action="append", default=[], metavar="ROLE=NAME",
                   help="table input: column for audio / text / speaker, e.g. --column text=sentence")

    i = cmd("init", "Print a preset configuration to edit.", "example:\n  phonefair init --preset timit > my.toml")
    i.add_argument("--preset", default="demo", help="preset name (default: %(default)s; see --list)")
    i.add_argument("--list", action="store_true", help="list the presets")
    return p


def _print_summary(result: object) -> None:
    from phonefair.report.summary import headline_lines

    lines = headline_lines(result.summary)  # type: ignore[attr-defined]
    for line in lines:
        print(line)
    rp = result.report_path  # type: ignore[attr-defined]
    print(f"outputs: {result.out_dir}" + (f"  report: {rp}" if rp else ""))  # type: ignore[attr-defined]


def _quiet_libraries() -> None:
    """phonefair draws its own progress bars; transformers' per-load bars would only interleave with them."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def _dispatch(args: argparse.Namespace, stages: object = None) -> int:
    from phonefair import config as C
    from phonefair import pipeline as P

    stages_fns = stages
    progress = not args.quiet
    _quiet_libraries()
    if args.command == "init":
        if args.list:
            print("\n".join(C.list_presets()))
        else:
            sys.stdout.write(C.preset_text(args.preset))
        return EXIT_OK
    if args.command == "demo":
        res = P.demo(args.out, model=args.model, quick=args.quick, progress=progress)
        _print_summary(res)
        return EXIT_OK
    if args.command == "synth":
        from phonefair.synth.corpus import build_synthetic_corpus

        kw: dict[str, object] = dict(speakers_per_group=args.speakers_per_group,
                                     sentences_per_speaker=args.sentences_per_speaker, seed=args.seed,
                                     progress=progress)
        if args.accents:
            kw["accents"] = [a.strip() for a in args.accents.split(",") if a.strip()]
        corpus = build_synthetic_corpus(args.out, **kw)  # type: ignore[arg-type]
        print(repr(corpus))
        return EXIT_OK
    if args.command == "validate":
        return _validate(args)
    if args.command == "align":
        return _align(args, progress)
    cfg = C.load_config(args.config)
    if getattr(args, "out", None) is not None:
        cfg = cfg.replace_output(args.out)
    if args.command == "merge":
        stores = P.merge_shards(cfg, num_shards=args.num_shards, progress=progress)
        for name, store in stores.items():
            print(f"{name}: {store}")
        return EXIT_OK
    if args.command == "finetune":
        results, per = P.finetune(cfg, progress=progress)
        print(per.to_string(index=False))
        for name, r in results.items():
            print(f"{name}: {r.model_dir}")
        return EXIT_OK
    if args.command == "compare":
        comp = P.compare(cfg, before=args.before, after=args.after, progress=progress)
        _print_summary(comp)
        return EXIT_OK
    if args.command == "extract":
        if (args.shard is None) != (args.num_shards is None):
            raise _UsageError("--shard and --num-shards go together")
        if args.shard is not None:
            if not 0 <= args.shard < args.num_shards:
                raise _UsageError(f"--shard must be in [0, {args.num_shards}), got {args.shard}")
            for path in P.extract_shard(cfg, shard=args.shard, num_shards=args.num_shards, progress=progress):
                print(f"shard written: {path}")
            return EXIT_OK
        if args.backend or args.num_workers:
            from dataclasses import replace

            x = cfg.extraction
            cfg = replace(cfg, extraction=replace(x, backend=args.backend or x.backend,
                                                  num_workers=args.num_workers or x.num_workers))
    if args.command == "run":
        selected = None if not args.stages else [s.strip() for s in args.stages.split(",") if s.strip()]
    else:
        selected = args.stages
    kw = {} if stages_fns is None else {"functions": stages_fns}
    res = P.run(cfg, stages=selected, progress=progress, **kw)
    _print_summary(res)
    return EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    from phonefair import config as C
    from dataclasses import replace

    from phonefair.pipeline import stages as P

    if args.config is not None:
        if args.kind or args.root:
            raise _UsageError("give either CONFIG or --kind/--root, not both")
        cfg = C.load_config(args.config)
        if args.headers_only:
            cfg = replace(cfg, corpus=replace(cfg.corpus, check_audio="headers"))
        corpus = P.load_corpus(cfg, cfg.out_dir)
        problems, summary, ok, text = P.validate(corpus, cfg, progress=not args.quiet)
        errors, warnings = P.preflight(corpus, cfg, cfg.out_dir)
        text = "\n".join([text] + [f"error: {e}" for e in errors] + [f"warning: {w}" for w in warnings]).strip()
        ok = ok and not errors
    else:
        if not (args.kind and args.root):
            raise _UsageError("validate needs CONFIG or both --kind and --root")
        cfg = C.parse_config({"corpus": {"kind": args.kind, "root": str(args.root),
                                         "options": _loader_options(args.option),
                                         "check_audio": "headers" if args.headers_only else "content"},
                              "groups": {"attribute": args.group_by or "speaker",
                                         "min_speakers": args.min_speakers},
                              "encoders": [{"model": "none"}]}, source="command line", base_dir=Path.cwd())
        corpus = P.load_corpus(cfg, Path.cwd())
        problems, summary, ok, text = P.validate(corpus, cfg, progress=not args.quiet)
    print(repr(corpus))
    print(text or f"{len(problems)} problem(s) recorded by the loader")
    return EXIT_OK if ok else EXIT_DATA


def _align(args: argparse.Namespace, progress: bool) -> int:
    from phonefair.align import align_corpus

    columns: dict[str, str] = {}
    for item in args.column:
        role, sep, name = item.partition("=")
        if not sep or not name:
            raise _UsageError(f"--column expects ROLE=NAME, got {item!r}")
        columns[role.strip()] = name.strip()
    res = align_corpus(args.input, args.out, kind=args.kind, backend=args.backend, model=args.model,
                       language=args.language, speakers=args.speakers, columns=columns or None, jobs=args.jobs,
                       device=args.device, resume=not args.no_resume, audio="copy" if args.copy_audio else "link",
                       progress=progress)
    c = res.counts
    print(f"aligned {c['aligned']} of {c['utterances']} utterances ({c['resumed']} from an earlier run), "
          f"{c['failed']} failed, {c['input_problems']} input row(s) not usable")
    if len(res.problems):
        by_kind = res.problems.groupby(["severity", "kind"], dropna=False).size()
        for (severity, kind), n in by_kind.items():
            print(f"  {n:6d} {severity:7s} {kind}")
        print(f"problems: {res.out_dir / 'alignment_problems.csv'}")
    print(f"corpus: {res.out_dir}  (load with kind 'textgrid', options speakers={res.speakers_path}, "
          f"phone_scheme={res.phone_scheme})")
    return EXIT_OK


def _loader_options(items: Sequence[str]) -> dict[str, object]:
    """``KEY=VALUE`` strings → a dict; values are read as TOML scalars when they parse (1, 0.5, true), else text."""
    import tomllib

    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise _UsageError(f"--option expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value
    return out


def main(argv: Sequence[str] | None = None, *, stages: object = None) -> int:
    """Entry point of the ``phonefair`` command; returns the exit code. ``stages``: a
    :class:`phonefair.pipeline.StageFunctions` registry to run instead of the default stages (tests, extensions)."""
    parser = build_parser()
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        return _dispatch(args, stages)
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0) if isinstance(exc.code, int) or exc.code is None else EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - map every failure to one line + an exit code
        from phonefair.errors import exit_code

        code = EXIT_USAGE if isinstance(exc, _UsageError) else exit_code(exc)
        if debug:
            traceback.print_exc()
        else:
            msg = str(exc).strip() or type(exc).__name__
            first, _, rest = msg.partition("\n")
            print(f"phonefair: error: {first}" + (f"\n{rest}" if rest and code == EXIT_DATA else ""),
                  file=sys.stderr)
            if code == EXIT_RUN:
                print("phonefair: (run again with --debug for the traceback)", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("phonefair: interrupted (finished stages are cached; rerun to continue)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
