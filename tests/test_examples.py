"""Every script in examples/ runs to completion, offline, and prints its summary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

#: A word each example prints once it has done its work.
EXPECTED = {
    "fastapi_mount.py": "Mounted",
    "launcher_cache.py": "Cached: 15 of 30",
    "flow_on_dask.py": "second run on Dask",
    "llm_auto_limits.py": "Learned limits",
    "llm_batch.py": "Launched",
    "quickstart.py": "cached",
    "rate_limited_map.py": "Summary",
    "result_store.py": "Stored",
    "serve_sentiment.py": "Served",
    "shared_keys.py": "Shared limits held",
    "stream_enrich.py": "Enriched",
    "web_app.py": "Web app stopped cleanly",
}


def test_every_example_is_checked() -> None:
    names = {path.name for path in EXAMPLES}
    assert names == set(EXPECTED), "add each example to EXPECTED with a word its output must show"


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda path: path.name)
def test_example_runs(script: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=tmp_path,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},  # rich draws the table with box characters
        timeout=60,
    )
    assert proc.returncode == 0, f"exit status {proc.returncode}\n--- stderr ---\n{proc.stderr}"
    assert EXPECTED[script.name] in proc.stdout, proc.stdout
