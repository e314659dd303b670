"""Ray Data backend on a local 2-CPU Ray runtime: store == local extract bit for bit, a killed worker is retried,
a crashed local run is resumed by the Ray backend."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from phonefair.corpus.schema import Corpus
from phonefair.encoders import load_encoder, save_tiny_model
from phonefair.extraction import extract
from phonefair.extraction.extract import CRASH_ENV
from phonefair.extraction.ray_backend import RAY_CRASH_ENV, extract_ray

from test_shards import BS, assert_same_store  # tests/ is on sys.path (rootdir conftest)

ray = pytest.importorskip("ray")

# two encoder actors on a 2-CPU runtime leave room for the audio-reading tasks
KW = dict(batch_size=BS, num_workers=2, cpus_per_worker=0.5, read_num_cpus=0.25, progress=False)


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    from phonefair.synth.corpus import build_synthetic_corpus

    return build_synthetic_corpus(tmp_path_factory.mktemp("synth"), accents=["en-US", "en-GB-x-rp"],
                                  speakers_per_group=1, sentences_per_speaker=2, seed=0, progress=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model("wav2vec2-stable", tmp_path_factory.mktemp("m") / "w")  # padded batches


@pytest.fixture(scope="module")
def local(corpus: Corpus, model: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return extract(corpus, load_encoder(model), store_root=tmp_path_factory.mktemp("local"), batch_size=BS,
                   progress=False)


def test_ray_store_equals_local(ray_runtime: None, corpus: Corpus, model: Path, local, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    st = extract_ray(corpus, load_encoder(model), store_root=tmp_path, **KW)
    assert_same_store(local, st)
    b = st.provenance["backend"]
    assert b["name"] == "ray" and b["num_workers"] == 2 and b["n_worker_processes"] >= 1
    assert st.provenance["resumed"] is False
    # a second call finds the complete store (no Ray work)
    assert extract_ray(corpus, str(model), store_root=tmp_path, **KW).path == st.path


def test_killed_worker_is_retried(ray_runtime: None, corpus: Corpus, model: Path, local, tmp_path: Path,  # type: ignore[no-untyped-def]
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "crashed"
    monkeypatch.setenv(RAY_CRASH_ENV, str(marker))
    st = extract_ray(corpus, load_encoder(model), store_root=tmp_path / "s", max_retries=3, **KW)
    assert marker.exists()  # a worker really died (os._exit) ...
    assert marker.read_text() != str(os.getpid())
    assert_same_store(local, st)  # ... and the store is complete and identical anyway


def test_ray_resumes_a_crashed_local_run(ray_runtime: None, corpus: Corpus, model: Path, local,  # type: ignore[no-untyped-def]
                                         tmp_path: Path) -> None:
    """A local run killed after its first commit (3 utterances) leaves a journal; the Ray backend resumes it."""
    code = textwrap.dedent(f"""
        import torch
        torch.set_num_threads(1)  # as the Ray actors: the thread count can change float reductions
        from phonefair.corpus.schema import Corpus
        from phonefair.extraction import extract
        corpus = Corpus.load({str(corpus.source)!r})
        extract(corpus, {str(model)!r}, store_root={str(tmp_path)!r}, batch_size={BS}, progress=False,
                commit_every_s=0.0)
    """)
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, CRASH_ENV: f"{BS}:commit"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 77, r.stderr[-2000:]
    st = extract_ray(corpus, load_encoder(model), store_root=tmp_path, **KW)
    assert st.provenance["resumed"] is True and st.provenance["n_utterances_reused"] == BS
    assert_same_store(local, st)
