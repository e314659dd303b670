"""Forced alignment with a CTC phoneme model, for any language espeak-ng speaks.

The model is a local directory in one of two layouts:

* a Hugging Face CTC checkpoint (``config.json`` of a ``*ForCTC`` architecture + ``vocab.json``), e.g. the
  wav2vec2 espeak-phoneme models (``facebook/wav2vec2-lv-60-espeak-cv-ft``, ``facebook/wav2vec2-xlsr-53-espeak-cv-ft``)
  downloaded beforehand; the blank is the ``pad_token_id``;
* the output folder of ``phonefair.finetune`` (``model/`` + ``ctc_head.pt``): ARPABET-39 phones, blank = 0.

The transcript's words are phonemised with espeak-ng in ``language`` and mapped onto the model's vocabulary: an
ARPABET vocabulary (every non-special token an ARPABET-39 class) gets espeak's IPA through the ``espeak_ipa`` phone
map; an IPA vocabulary gets each phoneme (stress marks removed) split into the longest vocabulary tokens it is made
of (``aɪ`` stays ``aɪ`` when the vocabulary has it, else ``a`` + ``ɪ``). Phone labels in the TextGrids are the
vocabulary's tokens (ARPABET upper-cased).

Times: the model emits one posterior frame per ``hop`` seconds (20 ms for wav2vec-style CNNs) centred at
``offset + hop·t``; frame ``t`` stands for ``[offset + hop·(t - ½), offset + hop·(t + ½))``. A phone starts at the
first frame of its token on the Viterbi path and ends where the next phone starts: the blank frames after a token
belong to it (CTC posteriors are spiky, so a token's own frames cover only part of the phone). The last phone
of the utterance ends at its last token frame.

Confidence of a phone: the mean posterior probability of its token over the frames the path spends on it (0–1).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from phonefair.align.base import AlignedPhone, AlignedUtterance, AlignmentFailure
from phonefair.align.g2p import arpabet_from_ipa, ipa_phonemes, strip_stress
from phonefair.align.viterbi import ctc_forced_align, min_frames
from phonefair.corpus.phonesets import ARPABET39
from phonefair.errors import ConfigError, EncoderError

__all__ = ["FINETUNE_HEAD", "CTCAligner", "tokenize_ipa"]

SAMPLE_RATE = 16000
#: file of a phonefair.finetune output folder holding the CTC head (``model/`` holds the encoder)
FINETUNE_HEAD = "ctc_head.pt"
_SPECIAL = {"<pad>", "<s>", "</s>", "<unk>", "|", "<blank>", "[PAD]", "[UNK]", " "}
#: IPA spellings that differ only by code point (espeak writes U+0261 ɡ; some vocabularies use ASCII g)
_EQUIVALENT = {"ɡ": "g", "g": "ɡ"}


def tokenize_ipa(phoneme: str, vocab: dict[str, int]) -> tuple[list[str], str]:
    """Split one IPA phoneme (stress marks already removed) into vocabulary tokens, longest first.

    Returns ``(tokens, unmatched characters)``; characters with no token (alone or as part of a longer one) are
    skipped and returned so the caller can report them.
    """
    tokens: list[str] = []
    unmatched = ""
    i = 0
    while i < len(phoneme):
        for j in range(len(phoneme), i, -1):
            piece = phoneme[i:j]
            alt = "".join(_EQUIVALENT.get(c, c) for c in piece)
            if piece in vocab or alt in vocab:
                tokens.append(piece if piece in vocab else alt)
                i = j
                break
        else:
            unmatched += phoneme[i]
            i += 1
    return tokens, unmatched


def _frame_geometry(config: Any) -> tuple[float, float]:
    """(hop, offset of frame 0's centre) in seconds from the CNN's kernels and strides."""
    kernels = list(getattr(config, "conv_kernel", (10, 3, 3, 3, 3, 2, 2)))
    strides = list(getattr(config, "conv_stride", (5, 2, 2, 2, 2, 2, 2)))
    hop = 1
    field = 1
    for k, s in zip(kernels, strides, strict=True):
        field += (k - 1) * hop
        hop *= s
    return hop / SAMPLE_RATE, field / 2 / SAMPLE_RATE


class CTCAligner:
    """Forced aligner on a CTC phoneme model (see the module docstring for the accepted model directories)."""

    name = "ctc"

    def __init__(self, model: str | Path, *, language: str = "en-US", device: str = "cpu", seed: int = 0) -> None:
        import torch

        self.model_dir = Path(model)
        if not self.model_dir.is_dir():
            raise ConfigError(f"--model {model}: not a directory; give a local CTC checkpoint folder (config.json + "
                              f"vocab.json) or a phonefair finetune output folder (model/ + {FINETUNE_HEAD})")
        self.language = language
        self.device = torch.device(device)
        self.seed = seed
        self._proj: Any = None  # the CTC head of a phonefair finetune folder (HF checkpoints have their own)
        ipa_phonemes("a", language)  # fails early, naming the language, when espeak-ng lacks it
        if (self.model_dir / FINETUNE_HEAD).is_file():
            self._load_finetuned()
        else:
            self._load_hf()
        tokens = [t for t in self.vocab if t not in _SPECIAL and self.vocab[t] != self.blank]
        arpa = {p.casefold() for p in ARPABET39}
        self.arpabet = bool(tokens) and all(t.casefold() in arpa for t in tokens)
        self.phone_scheme = "arpabet" if self.arpabet else "espeak_ipa"
        self._by_class = {t.casefold(): t for t in tokens}
        self._labels = {i: t for t, i in self.vocab.items()}
        self.hop, self.offset = _frame_geometry(self._config)

    # ------------------------------------------------------------------ loading
    def _load_finetuned(self) -> None:
        import torch
        from transformers import AutoModel

        from phonefair.encoders.base import hf_quiet

        head = torch.load(self.model_dir / FINETUNE_HEAD, map_location="cpu", weights_only=True)
        enc_dir = self.model_dir / "model"
        try:
            with hf_quiet():
                enc = AutoModel.from_pretrained(enc_dir)
        except Exception as exc:
            raise EncoderError(f"{enc_dir}: cannot load the fine-tuned encoder: {exc}") from exc
        proj = torch.nn.Linear(int(head["hidden_size"]), len(head["vocab"]))
        proj.load_state_dict({k.removeprefix("proj."): v for k, v in head["state_dict"].items()
                              if k.startswith("proj.")})
        self._encoder, self._proj = enc.eval().to(self.device), proj.eval().to(self.device)
        self._config = enc.config
        self.vocab = {t: i for i, t in enumerate(head["vocab"])}
        self.blank = 0
        self._normalize = _do_normalize(enc_dir, enc.config)
        self._weights_id = _files_digest([self.model_dir / FINETUNE_HEAD, *sorted(enc_dir.glob("*.safetensors"))])

    def _load_hf(self) -> None:
        from transformers import AutoModelForCTC

        from phonefair.encoders.base import hf_quiet

        vocab_file = self.model_dir / "vocab.json"
        if not vocab_file.is_file():
            raise ConfigError(f"{self.model_dir}: no vocab.json (a CTC checkpoint needs its token vocabulary) and "
                              f"no {FINETUNE_HEAD} (phonefair finetune output)")
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        if vocab and all(isinstance(v, dict) for v in vocab.values()):  # multilingual tokenizers nest per language
            vocab = next(iter(vocab.values())) if len(vocab) == 1 else vocab.get(self.language, {})
        if not vocab:
            raise ConfigError(f"{vocab_file}: empty vocabulary (for language {self.language!r})")
        try:
            with hf_quiet():
                model = AutoModelForCTC.from_pretrained(self.model_dir)
        except Exception as exc:
            raise EncoderError(f"{self.model_dir}: cannot load as a CTC model (AutoModelForCTC): {exc}") from exc
        self._encoder = model.eval().to(self.device)
        self._proj = None
        self._config = model.config
        self.vocab = {str(t): int(i) for t, i in vocab.items()}
        pad = getattr(model.config, "pad_token_id", None)
        self.blank = int(pad) if pad is not None else int(self.vocab.get("<pad>", 0))
        self._normalize = _do_normalize(self.model_dir, model.config)
        self._weights_id = _files_digest([vocab_file, *sorted(self.model_dir.glob("*.safetensors")),
                                          *sorted(self.model_dir.glob("*.bin"))])

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "model": str(self.model_dir.resolve()), "weights": self._weights_id,
                "language": self.language, "vocabulary": self.phone_scheme, "g2p": f"espeak-ng {self.language}",
                "boundaries": "onset of the token on the Viterbi path; trailing blanks belong to the phone"}

    # ------------------------------------------------------------------ transcript
    def _word_tokens(self, word: str) -> tuple[list[str], str]:
        """Vocabulary tokens of one word and a description of what could not be mapped ("" when all of it)."""
        ipa = ipa_phonemes(word, self.language)
        if self.arpabet:
            classes, unknown = arpabet_from_ipa(ipa)
            tokens = [self._by_class[c] for c in classes if c in self._by_class]
            missing = [c for c in classes if c not in self._by_class]
            lost = unknown + missing
            return tokens, (f"espeak-ng phonemes {' '.join(ipa)}: {lost} not in the vocabulary" if lost else "")
        tokens, unmatched = [], ""
        for p in ipa:
            t, u = tokenize_ipa(strip_stress(p), self.vocab)
            tokens += [x for x in t if x not in _SPECIAL]
            unmatched += u
        return tokens, (f"espeak-ng phonemes {' '.join(ipa)}: {unmatched!r} not in the vocabulary" if unmatched
                        else "")

    def _targets(self, words: list[str]) -> tuple[list[int], list[int], list[dict[str, Any]]]:
        ids: list[int] = []
        word_of: list[int] = []
        notes: list[dict[str, Any]] = []
        bad: list[str] = []
        for k, w in enumerate(words):
            tokens, lost = self._word_tokens(w)
            if not tokens:
                bad.append(f"{w!r} ({lost or 'espeak-ng gives no phonemes'})")
                continue
            if lost:
                notes.append({"kind": "oov_partial", "severity": "warning", "message": f"word {w!r}: {lost}; "
                              "those phonemes are not aligned"})
            ids += [self.vocab[t] for t in tokens]
            word_of += [k] * len(tokens)
        if bad:
            raise AlignmentFailure("oov_unpronounceable", f"no pronunciation in the model's vocabulary for "
                                   f"{', '.join(bad)}", notes)
        return ids, word_of, notes

    # ------------------------------------------------------------------ alignment
    def log_posteriors(self, audio: np.ndarray) -> np.ndarray:
        """``[T, V]`` frame log-posteriors of 16 kHz mono ``audio``."""
        import torch

        from phonefair.encoders.base import normalise_waveform

        x = normalise_waveform(audio) if self._normalize else np.asarray(audio, dtype=np.float32)
        with torch.inference_mode():
            wav = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(self.device)
            if self._proj is None:
                logits = self._encoder(wav).logits
            else:
                logits = self._proj(self._encoder(wav).last_hidden_state)
            return torch.log_softmax(logits.float(), dim=-1)[0].cpu().numpy()

    def align(self, audio: np.ndarray, words: list[str]) -> AlignedUtterance:
        ids, word_of, notes = self._targets(words)
        duration = len(audio) / SAMPLE_RATE
        lp = self.log_posteriors(audio)
        if lp.shape[0] < min_frames(ids):
            raise AlignmentFailure("audio_too_short", f"{duration:.3f} s gives {lp.shape[0]} model frames for "
                                   f"{len(ids)} phones (a CTC path needs {min_frames(ids)})", notes)
        try:
            path = ctc_forced_align(lp, ids, blank=self.blank)
        except ValueError as exc:
            raise AlignmentFailure("no_alignment", f"CTC Viterbi: {exc}", notes) from exc
        spans = path.spans(len(ids))
        post = np.exp(lp)
        phones: list[AlignedPhone] = []
        for i, (first, last) in enumerate(spans):
            start = self._edge(first)
            end = self._edge(spans[i + 1][0]) if i + 1 < len(spans) else self._edge(last + 1)
            start, end = max(0.0, start), min(duration, end)
            if end <= start:
                raise AlignmentFailure("no_alignment", f"phone {i} fell outside the audio", notes)
            conf = float(post[first:last + 1, ids[i]].mean())
            phones.append(AlignedPhone(start=round(start, 6), end=round(end, 6),
                                       label=self._label(ids[i]), word_index=word_of[i],
                                       confidence=conf if math.isfinite(conf) else 0.0))
        return AlignedUtterance(phones=phones, words=list(words), notes=notes)

    def _edge(self, frame: int) -> float:
        """Start time of frame ``frame`` (frame 0 starts at 0)."""
        return 0.0 if frame == 0 else self.offset + self.hop * (frame - 0.5)

    def _label(self, token_id: int) -> str:
        t = self._labels[token_id]
        return t.upper() if self.arpabet else t


def _do_normalize(directory: Path, config: Any) -> bool:
    """Waveform normalisation as the checkpoint's preprocessor says; else as pre-training did (layer-norm CNN)."""
    pre = directory / "preprocessor_config.json"
    if pre.is_file():
        return bool(json.loads(pre.read_text()).get("do_normalize", False))
    return getattr(config, "feat_extract_norm", "layer") == "layer"


def _files_digest(paths: list[Path]) -> str:
    """A cheap identity of model files: names, sizes and modification times (not their content)."""
    h = hashlib.sha256()
    for p in paths:
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]
