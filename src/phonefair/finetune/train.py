"""Phone-level CTC fine-tuning of a speech encoder, with optional fairness objectives.

``finetune(corpus, groups, model, out_dir, objective=...)`` trains a linear CTC head over the 38 ARPABET-39 speech
phones (+ blank) on the corpus' ``train`` speakers, optionally with a speaker-group classifier used adversarially
(gradient reversal) and/or cooperatively (domain-enhancing, with group-balanced batches), and reports the phone
error rate per group on the held-out speakers. The fine-tuned encoder is written as a standard transformers model
directory that the extraction stage loads like any other checkpoint. See ``docs/finetune.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from phonefair.corpus.schema import Corpus, problems_frame
from phonefair.encoders.base import hf_quiet
from phonefair.errors import DataError
from phonefair.finetune.data import (VOCAB, GroupBalancedSampler, UniformSampler, Utterance, UtteranceSet,
                                     build_utterances)
from phonefair.finetune.evaluate import edit_distance, greedy_decode, per_by_group
from phonefair.finetune.objectives import CTCHead, GroupClassifier, WeightSchedule, grad_reverse

__all__ = ["OBJECTIVES", "SUPPORTED_MODEL_TYPES", "FinetuneConfig", "FinetuneResult", "finetune",
           "finetune_variants", "evaluate_per"]

Objective = Literal["ctc", "adversarial", "domain"]
OBJECTIVES: tuple[str, ...] = ("ctc", "adversarial", "domain")
#: transformers ``config.model_type`` values whose encoders take raw waveforms and have a CNN feature encoder
SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")
#: config fields that may differ between a checkpoint and a resumed run (they do not change what is learnt so far)
_RESUME_FREE = {"steps", "device", "amp", "save_every", "n_boot", "progress", "stop_after"}
_SR = 16000
CHECKPOINT = "checkpoint"
STATE_FILE = "trainer_state.pt"


@dataclass(frozen=True)
class FinetuneConfig:
    """Every setting of a fine-tuning run (written to ``config.json``; a resumed run must match it).

    ``objective`` is a subset of :data:`OBJECTIVES`: ``{"ctc"}`` is the control, ``"adversarial"`` and ``"domain"``
    add their group-classifier term to CTC and may be combined (then two classifiers are trained: the cooperative
    one reads ``domain_layer``, the adversarial one ``adv_layer``, which must differ).
    """

    objective: tuple[str, ...] = ("ctc",)
    steps: int = 1000
    batch_size: int = 8
    lr: float = 5e-5  # encoder learning rate (peak)
    head_lr: float | None = None  # CTC head and group classifiers; None = lr
    head_warmup_steps: int = 0  # steps during which only the new heads train (encoder frozen)
    lr_warmup_steps: int | None = None  # linear LR warm-up after the head warm-up; None = 10 % of the encoder steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    adv_weight: WeightSchedule = field(default_factory=WeightSchedule)
    domain_weight: float = 0.1  # weight of the cooperative group loss
    adv_layer: str = "last"  # "last" (last_hidden_state) or a hidden-state index "0".."L"
    domain_layer: str | None = None  # None: "last", or the middle layer when combined with "adversarial"
    group_balanced: bool | None = None  # None: True iff "domain" is in the objective
    classifier_bottleneck: int = 256
    head_dropout: float = 0.1
    seed: int = 0
    device: str = "cpu"
    amp: bool | None = None  # None: on for CUDA, off on CPU
    save_every: int = 100
    train_split: str = "train"
    eval_split: str = "test"
    n_boot: int = 1000
    progress: bool = True
    stop_after: int | None = None  # train at most this many steps in this call, checkpoint, return (wall-time limits)

    def __post_init__(self) -> None:
        obj = (self.objective,) if isinstance(self.objective, str) else tuple(self.objective)
        if bad := [o for o in obj if o not in OBJECTIVES]:
            raise ValueError(f"unknown objective(s) {bad}; choose from {OBJECTIVES}")
        if not obj:
            raise ValueError("objective is empty; use 'ctc' for plain CTC fine-tuning")
        obj = tuple(o for o in OBJECTIVES if o in obj)  # canonical order
        if len(obj) > 1 and "ctc" in obj:
            obj = tuple(o for o in obj if o != "ctc")  # CTC is always part of the loss
        object.__setattr__(self, "objective", obj)
        object.__setattr__(self, "adv_weight", WeightSchedule.parse(self.adv_weight))  # type: ignore[arg-type]
        for name in ("steps", "batch_size", "save_every", "n_boot"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.head_warmup_steps <= self.steps:
            raise ValueError(f"head_warmup_steps must be in [0, steps={self.steps}], got {self.head_warmup_steps}")
        if self.lr <= 0 or (self.head_lr is not None and self.head_lr <= 0):
            raise ValueError(f"learning rates must be > 0 (lr={self.lr}, head_lr={self.head_lr})")
        if self.max_grad_norm <= 0 or self.domain_weight < 0:
            raise ValueError("max_grad_norm must be > 0 and domain_weight >= 0")
        for name in ("adv_layer", "domain_layer"):
            v = getattr(self, name)
            if v is not None and v != "last" and not str(v).isdigit():
                raise ValueError(f"{name} must be 'last' or a hidden-state index, got {v!r}")

    @property
    def uses_adversarial(self) -> bool:
        return "adversarial" in self.objective

    @property
    def uses_domain(self) -> bool:
        return "domain" in self.objective

    @property
    def balanced(self) -> bool:
        return self.uses_domain if self.group_balanced is None else bool(self.group_balanced)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["objective"] = list(self.objective)
        d["adv_weight"] = self.adv_weight.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        """From a dict such as a TOML ``[finetune]`` table (unknown keys raise, naming them)."""
        names = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(d) - names):
            raise ValueError(f"finetune config: unknown key(s) {unknown}; known: {sorted(names)}")
        kw = dict(d)
        if "objective" in kw and not isinstance(kw["objective"], str):
            kw["objective"] = tuple(kw["objective"])
        return cls(**kw)


@dataclass
class FinetuneResult:
    """What a fine-tuning run produced (all of it is also on disk under ``out_dir``)."""

    out_dir: Path
    model_dir: Path  # standard transformers model directory (the fine-tuned encoder)
    log: pd.DataFrame  # one row per step: step, loss_ctc, loss_group, lambda, lr, grad_norm, ...
    per_group_per: pd.DataFrame  # group, per, ci_low, ci_high, n_speakers, n_phones (held-out speakers)
    per_speaker_per: pd.DataFrame  # speaker, group, n_utterances, edits, ref_phones, per
    config: FinetuneConfig
    problems: pd.DataFrame  # utterances left out and why
    complete: bool = True  # False when ``stop_after`` ended this call early: resume to finish


# ---------------------------------------------------------------------------------------------------- model
def _load_encoder(model: str | os.PathLike[str], *, safetensors_only: bool = False) -> Any:
    """``safetensors_only``: our own checkpoints are safetensors; a pickled ``pytorch_model.bin`` planted there is
    refused rather than loaded."""
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.from_pretrained(model)
    if cfg.model_type not in SUPPORTED_MODEL_TYPES:
        why = (" Whisper's encoder takes fixed 30 s log-Mel windows and has no CNN waveform encoder; CTC "
               "fine-tuning of it is not implemented." if cfg.model_type == "whisper" else "")
        raise ValueError(f"{model}: model_type {cfg.model_type!r} is not supported for fine-tuning "
                         f"(supported: {SUPPORTED_MODEL_TYPES}).{why}")
    with hf_quiet():
        enc = AutoModel.from_pretrained(model, **({"use_safetensors": True} if safetensors_only else {}))
    if hasattr(enc, "freeze_feature_encoder"):
        enc.freeze_feature_encoder()
    elif hasattr(enc.feature_extractor, "_freeze_parameters"):  # HubertModel has no freeze_feature_encoder
        enc.feature_extractor._freeze_parameters()
    else:  # pragma: no cover - every supported family has one of the two
        for p in enc.feature_extractor.parameters():
            p.requires_grad = False
    return enc


def _do_normalize(model: str | os.PathLike[str], enc: Any) -> bool:
    """Waveform normalisation as the checkpoint's preprocessor says; else as pre-training did (layer-norm CNN)."""
    pre = Path(model) / "preprocessor_config.json"
    if pre.is_file():
        return bool(json.loads(pre.read_text()).get("do_normalize", False))
    try:
        from transformers import AutoFeatureExtractor

        return bool(getattr(AutoFeatureExtractor.from_pretrained(model), "do_normalize", False))
    except Exception:  # no preprocessor anywhere: fall back to the architecture (REFERENCE §2.5)
        return getattr(enc.config, "feat_extract_norm", "layer") == "layer"


def _save_encoder(enc: Any, source: str | os.PathLike[str], directory: Path) -> None:
    with hf_quiet():
        enc.save_pretrained(directory)
    pre = Path(source) / "preprocessor_config.json"
    if pre.is_file():
        shutil.copy2(pre, directory / "preprocessor_config.json")
    else:
        try:
            from transformers import AutoFeatureExtractor

            AutoFeatureExtractor.from_pretrained(source).save_pretrained(directory)
        except Exception:  # the source has none; extraction then falls back to its own defaults
            pass


def _uses_mask(enc: Any) -> bool:
    # group-norm models were pre-trained without attention masks (REFERENCE §2.5): pad with zeros, pass no mask
    return getattr(enc.config, "feat_extract_norm", "layer") == "layer"


def _frames(enc: Any, n_samples: int | np.ndarray) -> Any:
    import torch

    return enc._get_feat_extract_output_lengths(torch.as_tensor(n_samples)).long()


# ---------------------------------------------------------------------------------------------------- audio
class _AudioCache:
    def __init__(self, corpus: Corpus, normalize: bool, maxsize: int = 256) -> None:
        from phonefair.corpus.audio import read_audio
        from phonefair.encoders.base import normalise_waveform

        rec = corpus.recordings.set_index("recording_id")
        channels, mixes = rec["channel"], rec["mix"].fillna(False)

        @lru_cache(maxsize=maxsize)
        def load(rid: str, start: float, end: float) -> np.ndarray:
            ch = channels.get(rid, pd.NA)
            x = read_audio(corpus.audio_path(rid), target_sr=_SR, start=start, end=end,
                           channel=None if pd.isna(ch) else int(ch), mix=bool(mixes.get(rid, False)))
            return normalise_waveform(x) if normalize else x

        self.load = load

    def __call__(self, u: Utterance) -> np.ndarray:
        return self.load(u.recording_id, u.start, u.end)


def _batch(enc: Any, waves: Sequence[np.ndarray], device: Any) -> tuple[Any, Any, Any]:
    """Zero-padded waveforms, the sample-level attention mask (or None) and the frame-level validity mask."""
    import torch

    lens = np.array([len(w) for w in waves])
    x = torch.zeros(len(waves), int(lens.max()))
    for i, w in enumerate(waves):
        x[i, : len(w)] = torch.from_numpy(w)
    att = (torch.arange(x.shape[1])[None, :] < torch.from_numpy(lens)[:, None]).long()
    frames = _frames(enc, lens)
    return x.to(device), (att.to(device) if _uses_mask(enc) else None), frames.to(device)


# ---------------------------------------------------------------------------------------------------- training
def _lr_factor(step: int, cfg: FinetuneConfig) -> tuple[float, float]:
    """(encoder factor, head factor) of the peak LR at ``step``: heads warm up linearly over the first
    ``lr_warmup`` steps and decay linearly to 0; the encoder is off during the head warm-up, then warms up and
    decays on the same shape over the remaining steps."""
    enc_steps = cfg.steps - cfg.head_warmup_steps
    warm = cfg.lr_warmup_steps if cfg.lr_warmup_steps is not None else max(1, round(0.1 * enc_steps))

    def shape(t: int, total: int) -> float:
        if total <= 0:
            return 0.0
        up = min(1.0, (t + 1) / max(1, warm))
        down = max(0.0, (total - t) / max(1, total - min(warm, total - 1)))
        return min(up, down, 1.0)

    head = shape(step, cfg.steps)
    enc = 0.0 if step < cfg.head_warmup_steps else shape(step - cfg.head_warmup_steps, enc_steps)
    return enc, head


def _layer_index(layer: str | None, n_layers: int) -> str:
    if layer is None or layer == "last":
        return "last"
    if int(layer) > n_layers:
        raise ValueError(f"layer {layer!r} does not exist: the encoder has hidden states 0..{n_layers}")
    return str(int(layer))


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.default_rng([seed, step, 7]).integers(0, 2**31 - 1))


class _Trainer:
    def __init__(self, cfg: FinetuneConfig, enc: Any, group_names: list[str]) -> None:
        import torch

        self.cfg = cfg
        self.enc = enc
        self.device = torch.device(cfg.device)
        hid = int(enc.config.hidden_size)
        n_layers = int(enc.config.num_hidden_layers)
        torch.manual_seed(cfg.seed)
        self.head = CTCHead(hid, len(VOCAB), cfg.head_dropout)
        self.groups = group_names
        self.adv: GroupClassifier | None = None
        self.dom: GroupClassifier | None = None
        self.adv_layer = _layer_index(cfg.adv_layer, n_layers)
        dom_default = str(n_layers // 2) if cfg.uses_adversarial else "last"
        self.dom_layer = _layer_index(cfg.domain_layer if cfg.domain_layer is not None else dom_default, n_layers)
        if cfg.uses_adversarial:
            self.adv = GroupClassifier(hid, len(group_names), bottleneck=cfg.classifier_bottleneck)
        if cfg.uses_domain:
            self.dom = GroupClassifier(hid, len(group_names), bottleneck=cfg.classifier_bottleneck)
        if self.adv is not None and self.dom is not None and self.adv_layer == self.dom_layer:
            raise ValueError(f"adversarial and domain objectives read the same layer {self.adv_layer!r}: their "
                             "group losses would fight over one representation; set domain_layer/adv_layer apart")
        self.heads = torch.nn.ModuleList([m for m in (self.head, self.adv, self.dom) if m is not None])
        self.enc.to(self.device)
        self.heads.to(self.device)
        head_lr = cfg.head_lr if cfg.head_lr is not None else cfg.lr
        enc_params = [p for p in enc.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW([{"params": enc_params, "lr": cfg.lr, "name": "encoder"},
                                      {"params": list(self.heads.parameters()), "lr": head_lr, "name": "heads"}],
                                     weight_decay=cfg.weight_decay)
        self.base_lr = (cfg.lr, head_lr)
        self.amp = bool(cfg.amp if cfg.amp is not None else self.device.type == "cuda")
        if self.amp and self.device.type != "cuda":
            raise ValueError("amp=True needs a CUDA device (mixed precision on CPU is not supported here)")
        self.amp_dtype = (torch.bfloat16 if self.amp and torch.cuda.is_bf16_supported() else torch.float16)
        # a loss scaler is needed only for float16 (bfloat16 has float32's exponent range)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)

    def forward(self, x: Any, att: Any, frames: Any, *, need: Iterable[str]) -> dict[str, Any]:
        import torch

        need = set(need)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            out = self.enc(x, attention_mask=att, output_hidden_states=bool(need - {"last"}))
        states = {"last": out.last_hidden_state}
        for k in need - {"last"}:
            states[k] = out.hidden_states[int(k)]
        t = states["last"].shape[1]
        mask = torch.arange(t, device=frames.device)[None, :] < frames[:, None]
        return {"states": states, "mask": mask}

    def step(self, step: int, utts: Sequence[Utterance], waves: Sequence[np.ndarray]) -> dict[str, Any]:
        import torch
        import torch.nn.functional as F

        cfg = self.cfg
        # dropout, SpecAugment (numpy's global RNG inside transformers) and LayerDrop are seeded per step so that
        # a resumed run repeats exactly what an uninterrupted run would have done
        s = _step_seed(cfg.seed, step)
        torch.manual_seed(s)
        np.random.seed(s)
        f_enc, f_head = _lr_factor(step, cfg)
        self.opt.param_groups[0]["lr"] = self.base_lr[0] * f_enc
        self.opt.param_groups[1]["lr"] = self.base_lr[1] * f_head
        head_phase = step < cfg.head_warmup_steps
        lam = cfg.adv_weight(step, cfg.steps) if self.adv is not None else 0.0

        self.enc.train()
        self.heads.train()
        x, att, frames = _batch(self.enc, waves, self.device)
        need = {"last"} | ({self.adv_layer} if self.adv else set()) | ({self.dom_layer} if self.dom else set())
        with torch.set_grad_enabled(not head_phase):  # head warm-up: no encoder graph, no encoder gradients
            fw = self.forward(x, att, frames, need=need)
        states = {k: (v.detach() if head_phase else v) for k, v in fw["states"].items()}
        logp = self.head(states["last"])  # [B, T, C] float32
        targets = torch.cat([torch.tensor(u.targets, dtype=torch.long) for u in utts]).to(self.device)
        tlen = torch.tensor([len(u.targets) for u in utts], dtype=torch.long, device=self.device)
        loss_ctc = F.ctc_loss(logp.transpose(0, 1), targets, frames, tlen, blank=0, reduction="mean",
                              zero_infinity=True)
        loss = loss_ctc
        y = torch.tensor([self.groups.index(u.group) for u in utts], device=self.device)
        loss_group = torch.zeros((), device=self.device)
        group_acc = float("nan")
        if self.adv is not None:
            logits = self.adv(grad_reverse(states[self.adv_layer], lam), fw["mask"])
            la = F.cross_entropy(logits, y)
            loss = loss + la  # the classifier minimises la; the GRL makes the encoder maximise lam * la
            loss_group = loss_group + la.detach()
            group_acc = float((logits.argmax(-1) == y).float().mean())
        if self.dom is not None:
            logits = self.dom(states[self.dom_layer], fw["mask"])
            ld = F.cross_entropy(logits, y)
            loss = loss + cfg.domain_weight * ld
            loss_group = loss_group + ld.detach()
            if self.adv is None:
                group_acc = float((logits.argmax(-1) == y).float().mean())

        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        params = [p for g in self.opt.param_groups for p in g["params"] if p.grad is not None]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        if math.isfinite(grad_norm):
            self.scaler.step(self.opt)
        self.scaler.update()
        return {"step": step, "phase": "head" if head_phase else "full", "loss": float(loss.detach()),
                "loss_ctc": float(loss_ctc.detach()),
                "loss_group": float(loss_group) if (self.adv or self.dom) else float("nan"),
                "group_acc": group_acc, "lambda": lam, "lr": self.opt.param_groups[0]["lr"],
                "lr_head": self.opt.param_groups[1]["lr"], "grad_norm": grad_norm,
                "skipped": not math.isfinite(grad_norm)}

    def state(self, step: int) -> dict[str, Any]:
        return {"step": step, "heads": self.heads.state_dict(), "optimizer": self.opt.state_dict(),
                "scaler": self.scaler.state_dict(), "groups": self.groups, "vocab": list(VOCAB)}

    def load_state(self, st: dict[str, Any]) -> int:
        if st["groups"] != self.groups or st["vocab"] != list(VOCAB):
            raise ValueError(f"checkpoint groups {st['groups']} / vocabulary do not match this run "
                             f"({self.groups}); use a new out_dir or resume=False")
        self.heads.load_state_dict(st["heads"])
        self.opt.load_state_dict(st["optimizer"])
        self.scaler.load_state_dict(st["scaler"])
        return int(st["step"])


_STATE_KEYS = ("step", "heads", "optimizer", "scaler", "groups", "vocab")


def load_trainer_state(path: Path, device: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint's trainer state (heads, optimizer, scaler, step) without running code from it.

    ``weights_only=True``: only tensors and plain containers are unpickled, so a checkpoint folder received from
    someone else cannot execute anything; anything else is a :class:`~phonefair.errors.DataError` naming the file.
    """
    import pickle

    import torch

    try:
        st = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: not a plain tensor state (it holds other Python objects, which phonefair never "
                        f"unpickles: a checkpoint from elsewhere could run code); delete {path.parent} to start "
                        f"over") from exc
    except (RuntimeError, OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read the trainer state ({exc}); delete {path.parent} to start over") from exc
    if not isinstance(st, dict) or (missing := [k for k in _STATE_KEYS if k not in st]):
        raise DataError(f"{path}: not a phonefair trainer state (missing "
                        f"{missing if isinstance(st, dict) else list(_STATE_KEYS)}); delete {path.parent} to start "
                        f"over")
    return st


# ---------------------------------------------------------------------------------------------------- evaluation
def evaluate_per(enc: Any, head: Any, utterances: Sequence[Utterance], audio: Any, *, device: str = "cpu",
                 n_boot: int = 1000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Greedy-CTC phone error rate on ``utterances``: ``(per_speaker, per_group)``.

    Utterances are run one at a time (no padding, so group-norm models see exactly their own signal).
    """
    import torch

    enc.eval()
    head.eval()
    rows = []
    with torch.inference_mode():
        for u in utterances:
            w = audio(u)
            x = torch.from_numpy(w)[None].to(device)
            att = torch.ones_like(x, dtype=torch.long) if _uses_mask(enc) else None
            h = enc(x, attention_mask=att).last_hidden_state
            hyp = greedy_decode(head(h)[0].argmax(-1).cpu().numpy())
            rows.append({"recording_id": u.recording_id, "speaker": u.speaker, "group": u.group,
                         "edits": edit_distance(u.targets, hyp), "ref_phones": len(u.targets)})
    utt = pd.DataFrame(rows, columns=["recording_id", "speaker", "group", "edits", "ref_phones"])
    spk = (utt.groupby(["speaker", "group"], sort=True)
           .agg(n_utterances=("recording_id", "size"), edits=("edits", "sum"), ref_phones=("ref_phones", "sum"))
           .reset_index())
    spk["per"] = spk["edits"] / spk["ref_phones"]
    grp = per_by_group(spk, n_boot=n_boot, seed=seed)
    return spk, grp


# ---------------------------------------------------------------------------------------------------- driver
def _check_frames(enc: Any, us: UtteranceSet) -> tuple[list[Utterance], list[dict[str, Any]]]:
    """CTC needs at least as many frames as target phones: utterances that cannot fit are reported and left out."""
    keep, bad = [], []
    for u in us.utterances:
        n = int(_frames(enc, int(round((u.end - u.start) * _SR))))
        if n < len(u.targets):
            bad.append({"severity": "error", "file": u.recording_id, "line": None, "field": "phone",
                        "message": f"recording {u.recording_id!r} (speaker {u.speaker!r}): {len(u.targets)} "
                                   f"target phones but only {n} encoder frames", "action": "skipped utterance"})
        else:
            keep.append(u)
    return keep, bad


def _atomic_checkpoint(out: Path, trainer: _Trainer, source: str | os.PathLike[str], step: int) -> None:
    import torch

    tmp = out / f".{CHECKPOINT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _save_encoder(trainer.enc, source, tmp)
    torch.save(trainer.state(step), tmp / STATE_FILE)
    final, old = out / CHECKPOINT, out / f".{CHECKPOINT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)  # a crash before this line leaves .old, which resume falls back to
    shutil.rmtree(old, ignore_errors=True)


def _read_log(path: Path, upto: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] < upto]


def finetune(corpus: Corpus, groups: pd.Series, model: str | os.PathLike[str], out_dir: str | os.PathLike[str],
             *, objective: Objective | Iterable[Objective] = "ctc", steps: int = 1000, batch_size: int = 8,
             lr: float = 5e-5, head_warmup_steps: int = 0,
             adv_weight: WeightSchedule | float | dict[str, Any] = WeightSchedule(),
             group_balanced: bool | None = None, seed: int = 0, device: str = "cpu", amp: bool | None = None,
             resume: bool = True, progress: bool = True, **options: Any) -> FinetuneResult:
    """Fine-tune ``model`` (a transformers checkpoint directory or hub id) with phone CTC on the corpus'
    training speakers, optionally with fairness objectives, and evaluate PER per group on held-out speakers.

    ``objective``: ``"ctc"`` (control), ``"adversarial"``, ``"domain"`` or a set of them (see
    :class:`FinetuneConfig`; further settings such as ``head_lr``, ``domain_weight``, ``save_every``,
    ``eval_split`` go in ``options``). Writes to ``out_dir``: ``model/`` (the fine-tuned encoder, loadable with
    ``AutoModel.from_pretrained``), ``ctc_head.pt``, ``checkpoint/`` (encoder + heads + optimizer + step, for
    resuming), ``log.jsonl``, ``config.json``, ``per_group_per.csv``, ``per_speaker_per.csv``, ``problems.csv``.
    With ``resume=True`` an interrupted run continues from its last checkpoint (settings must match); with
    ``resume=False`` an existing checkpoint in ``out_dir`` is an error.
    """
    import torch

    cfg = FinetuneConfig(objective=(objective,) if isinstance(objective, str) else tuple(objective), steps=steps,
                         batch_size=batch_size, lr=lr, head_warmup_steps=head_warmup_steps,
                         adv_weight=adv_weight, group_balanced=group_balanced,  # type: ignore[arg-type]
                         seed=seed, device=device, amp=amp, progress=progress, **options)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ck = out / CHECKPOINT
    if not ck.is_dir() and (out / f".{CHECKPOINT}.old").is_dir():
        ck = out / f".{CHECKPOINT}.old"
    resuming = resume and (ck / STATE_FILE).is_file()
    if (ck / STATE_FILE).is_file() and not resume:
        raise FileExistsError(f"{out}: holds a checkpoint of an earlier run; pass resume=True to continue it "
                              "or choose a new out_dir")
    old_steps = None
    if resuming:
        old = json.loads((out / "config.json").read_text())
        old_steps = old.get("steps")
        new = cfg.to_dict()
        diff = sorted(k for k in new if k not in _RESUME_FREE and old.get(k) != new[k])
        if diff:
            raise ValueError(f"{out / 'config.json'}: cannot resume, setting(s) {diff} differ from the checkpointed "
                             f"run ({ {k: old.get(k) for k in diff} } vs { {k: new[k] for k in diff} })")

    us = build_utterances(corpus, groups)
    enc = _load_encoder(ck, safetensors_only=True) if resuming else _load_encoder(model)
    keep, frame_problems = _check_frames(enc, us)
    problems = pd.concat([us.problems, problems_frame(frame_problems)], ignore_index=True)
    train = [u for u in keep if u.split == cfg.train_split]
    held = [u for u in keep if u.split == cfg.eval_split]
    if not train:
        raise ValueError(f"corpus {corpus.name!r}: no usable utterances with split {cfg.train_split!r} "
                         f"(splits present: {sorted({u.split for u in us.utterances})})")
    group_names = sorted({u.group for u in train})
    if (cfg.uses_adversarial or cfg.uses_domain) and len(group_names) < 2:
        raise ValueError(f"objective {cfg.objective} needs >= 2 groups among training speakers, got {group_names}")
    normalize = _do_normalize(model, enc)
    audio = _AudioCache(corpus, normalize)
    trainer = _Trainer(cfg, enc, group_names)
    start = 0
    if resuming:
        start = trainer.load_state(load_trainer_state(ck / STATE_FILE, trainer.device))
    (out / "config.json").write_text(json.dumps({**cfg.to_dict(), "model": str(model)}, indent=2))
    sampler_cls = GroupBalancedSampler if cfg.balanced else UniformSampler
    sampler = sampler_cls(train, cfg.batch_size, seed=cfg.seed)

    log_path = out / "log.jsonl"
    log_rows = _read_log(log_path, start)  # drop entries after the checkpoint: those steps are redone
    log_path.write_text("".join(json.dumps(r) + "\n" for r in log_rows))
    bar = None
    if cfg.progress and start < cfg.steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=f"finetune {'+'.join(cfg.objective)}", unit="step")
    t0 = time.perf_counter()
    with log_path.open("a") as fh:
        for step in range(start, cfg.steps):
            idx = sampler.batch(step)
            utts = [train[i] for i in idx]
            rec = trainer.step(step, utts, [audio(u) for u in utts])
            rec["groups_in_batch"] = {g: sum(u.group == g for u in utts) for g in group_names}
            rec["elapsed_s"] = round(time.perf_counter() - t0, 3)
            # strict JSON (readable by jq etc.): NaN / inf are written as null
            rec = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}
            fh.write(json.dumps(rec, allow_nan=False) + "\n")
            fh.flush()
            log_rows.append(rec)
            if bar is not None:
                bar.update(1)
                # loss_group is None (null in the log) for the ctc control: show only what exists
                bar.set_postfix({name: f"{rec[key]:.3f}" for key, name in (("loss_ctc", "ctc"), ("loss_group", "grp"))
                                 if rec.get(key) is not None})
            stopping = cfg.stop_after is not None and step + 1 - start >= cfg.stop_after
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps or stopping:
                _atomic_checkpoint(out, trainer, model, step + 1)
            if stopping and step + 1 < cfg.steps:
                break
    if bar is not None:
        bar.close()
    log = _log_frame(log_rows)
    if log_rows and log_rows[-1]["step"] + 1 < cfg.steps:  # stopped early: no final model, no evaluation yet
        empty = per_by_group(pd.DataFrame(columns=["speaker", "group", "edits", "ref_phones"]))
        return FinetuneResult(out_dir=out, model_dir=out / CHECKPOINT, log=log, per_group_per=empty,
                              per_speaker_per=pd.DataFrame(), config=cfg, problems=problems, complete=False)

    model_dir = out / "model"
    tmp = out / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _save_encoder(trainer.enc.cpu(), model, tmp)
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp.rename(model_dir)
    torch.save({"state_dict": trainer.head.cpu().state_dict(), "vocab": list(VOCAB),
                "hidden_size": int(enc.config.hidden_size)}, out / "ctc_head.pt")
    trainer.enc.to(trainer.device)
    trainer.head.to(trainer.device)

    per_spk, per_grp = evaluate_per(trainer.enc, trainer.head, held, audio, device=cfg.device, n_boot=cfg.n_boot,
                                    seed=cfg.seed)
    prov = {"model": str(model), "objective": list(cfg.objective), "config": cfg.to_dict(), "eval_split":
            cfg.eval_split, "corpus": corpus.name, "corpus_fingerprint": corpus.fingerprint(),
            "normalize_waveform": normalize, "n_train_utterances": len(train), "n_eval_utterances": len(held),
            "targets": "ARPABET-39 speech phones ('sil' and <NA> removed); blank = 0",
            "n_sil_removed": us.n_sil_removed, "n_na_removed": us.n_na_removed,
            "resumed_from_step": start if resuming else None, "versions": _versions()}
    if resuming and old_steps != cfg.steps:
        prov["note"] = "steps changed on resume: LR and adversarial-weight schedules changed from that step on"
    per_grp.attrs["provenance"] = {**per_grp.attrs.get("provenance", {}), **prov}
    per_spk.attrs["provenance"] = prov
    if not held:
        problems = pd.concat([problems, problems_frame([{
            "severity": "warning", "file": corpus.name, "field": "split",
            "message": f"no usable utterances with split {cfg.eval_split!r}: PER not evaluated", "action": "kept"}])],
            ignore_index=True)
    per_grp.to_csv(out / "per_group_per.csv", index=False)
    per_spk.to_csv(out / "per_speaker_per.csv", index=False)
    problems.to_csv(out / "problems.csv", index=False)
    (out / "provenance.json").write_text(json.dumps(prov, indent=2, default=str))
    log.attrs["provenance"] = prov
    return FinetuneResult(out_dir=out, model_dir=model_dir, log=log, per_group_per=per_grp, per_speaker_per=per_spk,
                          config=cfg, problems=problems)


def finetune_variants(corpus: Corpus, groups: pd.Series, model: str | os.PathLike[str],
                      out_dir: str | os.PathLike[str], *,
                      variants: Sequence[Objective | tuple[Objective, ...]] = ("ctc", "adversarial", "domain"),
                      **kwargs: Any) -> tuple[dict[str, FinetuneResult], pd.DataFrame]:
    """Run :func:`finetune` once per objective variant (``out_dir/<variant>``) with otherwise equal settings.

    Returns the results by variant name and one PER table (variant, group, per, ci_low, ci_high, ...).
    """
    results: dict[str, FinetuneResult] = {}
    for v in variants:
        name = v if isinstance(v, str) else "+".join(v)
        results[name] = finetune(corpus, groups, model, Path(out_dir) / name, objective=v, **kwargs)
    table = pd.concat([r.per_group_per.assign(variant=k) for k, r in results.items()], ignore_index=True)
    table = table[["variant"] + [c for c in table.columns if c != "variant"]]
    table.attrs["provenance"] = {"variants": list(results), "model": str(model)}
    return results, table


def _log_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    log = pd.DataFrame(rows)
    for c in ("loss", "loss_ctc", "loss_group", "group_acc", "lambda", "lr", "lr_head", "grad_norm"):
        if c in log.columns:
            log[c] = pd.to_numeric(log[c], errors="coerce").astype(float)  # null -> NaN
    return log


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}
