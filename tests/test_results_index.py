"""The generated index of committed results (results/README.md)."""

from __future__ import annotations

import re

import pandas as pd

from coordchannels.index import build_index, main, result_folders
from tests.conftest import REPO

RESULTS = REPO / "results"


def test_index_lists_every_committed_result_with_its_links_and_published_rows():
    text = build_index(RESULTS)
    folders = [f.relative_to(RESULTS).as_posix() for f in result_folders(RESULTS)]
    # Every folder with a stats config or a manifest, the published logs first, and no other.
    assert folders[0] == "published_table3"
    assert {"ecg", "ecg_record", "ecg_arms/episode", "coordgate"} <= set(folders)
    headings = re.findall(r"^## \[`(.+?)/`\]", text, flags=re.M)
    assert headings == [*folders, "benchmarks"]  # the benchmarks (no statistics) close the index
    figures = 0
    for rel in folders:
        assert f"## [`{rel}/`]({rel}/)" in text
        for figure in (RESULTS / rel).glob("*.png"):
            assert f"({rel}/{figure.name})" in text
            figures += 1
    assert figures >= 2 * len([f for f in folders if (RESULTS / f / "fold_values.csv").is_file()])
    # a reproduced row sits beside the published one, both from the committed tables
    published = pd.read_csv(RESULTS / "published_table3" / "comparison_table.csv")
    row = published[(published.model == "NimeshaNet") & (published.metric == "train_r2")].iloc[0]
    assert f"{row.mean_diff:+.5f} [{row.ci_low:.5f}, {row.ci_high:.5f}]" in text
    assert "**commit**" in text and "**wall time**" in text and "**grouping**: `record`" in text


def test_index_check_mode_notices_an_out_of_date_file(tmp_path):
    out = tmp_path / "README.md"
    assert main(["--results", str(RESULTS), "--out", str(out)]) == 0
    assert main(["--results", str(RESULTS), "--out", str(out), "--check"]) == 0
    out.write_text("stale\n")
    assert main(["--results", str(RESULTS), "--out", str(out), "--check"]) == 1
