"""`exitbench run` end to end on each standard layout's fixture tree, bad inputs included."""

from __future__ import annotations

import pytest
from test_loaders import WSJ_NAMES, bad_tree, make_librimix, make_wham, make_wsj, speech  # noqa: F401
from typer.testing import CliRunner

from exitbench.harness.cli import app
from exitbench.results.views import connect

runner = CliRunner()
FIXTURES_VB = "tests/fixtures/voicebank"


def run(root, model: str, dataset: str, *extra: str):
    return runner.invoke(app, ["run", "--executor", "local", "--metrics", "none", "-m", model,
                               "--dataset", dataset, "-r", str(root), "-q", *extra])


def recorded(root) -> set[str]:
    return {r[0] for r in connect(root).execute("SELECT DISTINCT utt_id FROM utterances").fetchall()}


def test_a_folder_set_with_broken_files_records_the_good_ones_and_lists_the_bad(tmp_path, bad_tree):  # noqa: F811
    result = run(tmp_path / "r", "press-s", f"wsj0-2mix:{bad_tree}")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "8 utterance(s) failed" in result.output
    assert "bad_truncated [load]: s1 file s1/bad_truncated.wav: truncated WAV" in result.output
    assert recorded(tmp_path / "r") == set(WSJ_NAMES)
    errors = dict(connect(tmp_path / "r").execute("SELECT utt_id, reason FROM errors").fetchall())
    assert errors["bad_garbage"].startswith("unreadable or truncated mixture file mix/bad_garbage.wav")
    assert errors["bad_silent"] == "all-silent reference s2/bad_silent.wav"
    # the same set with --resample turns the rate mismatch into a recorded utterance
    result = run(tmp_path / "r2", "press-s", f"wsj0-2mix:{bad_tree}", "--resample")
    assert "bad_rate" in recorded(tmp_path / "r2")


@pytest.mark.parametrize("layout", ["wsj0-2mix", "wham", "whamr", "librimix"])
def test_separation_layouts_run_end_to_end(tmp_path, speech, layout):  # noqa: F811
    if layout == "wsj0-2mix":
        dataset, extra = f"wsj0-2mix:{make_wsj(tmp_path / 'd', speech)}", ()
    elif layout in ("wham", "whamr"):
        split = make_wham(tmp_path / "d", speech, reverb=layout == "whamr")
        dataset, extra = f"{layout}:{split}", ("--variant", "mix_clean" if layout == "wham" else "mix_clean_reverb")
    else:
        dataset, extra = f"librimix:{make_librimix(tmp_path / 'd', speech, relative=True)}", ("--variant", "mix_clean")
    result = run(tmp_path / "r", "press-s", dataset, *extra)
    assert result.exit_code == 0, result.output
    assert len(recorded(tmp_path / "r")) == 3


def test_enhancement_layouts_run_end_to_end(tmp_path):
    result = run(tmp_path / "r", "slimdemucs-s", f"voicebank:{FIXTURES_VB}")
    assert result.exit_code == 0, result.output
    con = connect(tmp_path / "r")
    assert con.execute("SELECT count(DISTINCT utt_id) FROM utterances").fetchone()[0] == 3
    # the enhancer's router-driven execution is recorded as the dynamic level with realised MACs
    kinds = dict(con.execute("SELECT name, kind FROM levels").fetchall())
    assert kinds["dynamic"] == "dynamic"
