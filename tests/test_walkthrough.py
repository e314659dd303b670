"""docs/walkthrough.md runs as written: its python blocks are executed in order, in a scratch folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "walkthrough.md"


def test_walkthrough_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{DOC.name}[block {i + 1}]", "exec"), namespace)  # noqa: S102 - our own docs
    assert (tmp_path / "walkthrough" / "demo" / "report.html").is_file()
    verdict = namespace["v"]  # type: ignore[index]
    assert set(verdict["group"]) == {"en-US", "en-GB-scotland", "en-029"}
    sim_v = namespace["sim_audit"].verdicts().set_index("group")  # type: ignore[attr-defined]
    assert sim_v.loc["C", "verdict"] == "served worse: random"
