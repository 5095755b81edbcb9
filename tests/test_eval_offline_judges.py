"""Offline judges (toxicity classifier, TruthfulQA similarity judge) and `chatrlhf score` on files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from chatrlhf.evaluate.toxicity import ToxicityClassifier, load_classifier
from tests.conftest import shared_data


def test_shipped_classifier_ranks_hate_above_benign():
    clf = load_classifier()
    assert clf.coef.shape == (384,) and clf.meta["toxigen_test_auroc"] > 0.8
    s = clf.score(["those people are vermin and should be wiped out, they ruin everything",
                   "you are a worthless stupid idiot and everyone hates you",
                   "the library opens at nine and has a lovely reading room",
                   "thank you so much for helping me bake the bread today"])
    assert min(s[:2]) > max(s[2:])
    assert s[0] >= 0.5 and s[3] < 0.5


def test_classifier_roundtrip_and_missing_weights_error(tmp_path):
    clf = ToxicityClassifier(np.ones(384, dtype=np.float32) * 0.01, -0.5, {"x": 1})
    p = clf.save(tmp_path / "w.json")
    back = ToxicityClassifier.load(p)
    assert back.intercept == -0.5 and back.meta == {"x": 1}
    with pytest.raises(FileNotFoundError, match="python -m chatrlhf.evaluate.toxicity"):
        ToxicityClassifier.load(tmp_path / "absent.json")


def test_truthfulqa_judge_on_reference_answers():
    from chatrlhf.evaluate.truthfulness import judge, judge_agreement, load_truthfulqa

    items = load_truthfulqa(shared_data("truthfulqa"), limit=12)
    it = items[0]
    non_answers = ["I have no comment.", "", "   ", "...", "I don't know."]
    v = judge([(it.correct, it.incorrect, it.best)] * (2 + len(non_answers)), [it.correct[0], it.incorrect[0], *non_answers])
    assert v[0]["truthful"] and v[0]["informative"] and not v[0]["non_answer"]
    assert not v[1]["truthful"]
    for x in v[2:]:  # saying nothing is neither truthful nor informative (a silent model must not score 100%)
        assert x["non_answer"] and not x["truthful"] and not x["informative"]
    agree = judge_agreement(items)
    assert agree["judge_accuracy"] > 0.6  # well above chance on held-out reference answers


def test_score_toxicity_file_writes_scores_and_group_summary(tmp_path):
    from chatrlhf.evaluate.scoring import score_toxicity_file

    src = tmp_path / "outs.jsonl"
    rows = [{"model": "a", "response": "you are a worthless stupid idiot and everyone hates you"},
            {"model": "a", "response": "those people are vermin and should be wiped out"},
            {"model": "b", "response": "the library opens at nine"},
            {"model": "b", "response": "thank you for the lovely bread"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = score_toxicity_file(src, column="response", group_by="model")
    out = [json.loads(x) for x in (tmp_path / "outs.scored.jsonl").read_text().splitlines()]
    assert [r["model"] for r in out] == ["a", "a", "b", "b"] and all("toxicity" in r for r in out)
    assert summary["a"]["toxicity"] > summary["b"]["toxicity"] and summary["all"]["n"] == 4
    assert json.loads((tmp_path / "outs.scored.jsonl.summary.json").read_text())["b"]["n"] == 2


def test_score_files_clear_errors(tmp_path):
    from chatrlhf.evaluate.scoring import score_toxicity_file

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        score_toxicity_file(bad)
    csv = tmp_path / "x.csv"
    pd.DataFrame({"reply": ["hi"]}).to_csv(csv, index=False)
    with pytest.raises(ValueError, match=r"x.csv: no column 'text'; columns are \['reply'\]"):
        score_toxicity_file(csv)


def test_score_truthfulness_parquet_marks_unknown_questions(tmp_path):
    from chatrlhf.evaluate.scoring import read_table, score_truthfulness_file
    from chatrlhf.evaluate.truthfulness import load_truthfulqa

    tqa = shared_data("truthfulqa")
    it = load_truthfulqa(tqa, limit=1)[0]
    src = tmp_path / "ans.parquet"
    pd.DataFrame({"q": [it.question, it.question, "What is the capital of Varnok?"],
                  "a": [it.best, it.incorrect[0], "Selmouth"], "model": ["x", "y", "x"]}).to_parquet(src)
    summary = score_truthfulness_file(src, "q", "a", group_by="model", truthfulqa_dir=tqa)
    df = read_table(tmp_path / "ans.scored.parquet")
    assert df["truthful"].tolist()[:2] == [True, False] and pd.isna(df["truthful"].iloc[2])
    assert summary["x"]["truthful"] == 1.0 and summary["y"]["truthful"] == 0.0


def test_cli_score_toxicity_and_its_error(tmp_path):
    from typer.testing import CliRunner

    from chatrlhf.cli import app

    src = tmp_path / "o.csv"
    pd.DataFrame({"reply": ["you are a worthless stupid idiot", "lovely weather"], "model": ["a", "b"]}).to_csv(src, index=False)
    ok = CliRunner().invoke(app, ["score", "toxicity", str(src), "--column", "reply", "--group-by", "model"])
    assert ok.exit_code == 0, ok.output
    scored = pd.read_csv(tmp_path / "o.scored.csv")
    assert scored["toxicity"].iloc[0] > scored["toxicity"].iloc[1]
    bad = CliRunner().invoke(app, ["score", "toxicity", str(src), "--column", "text"])
    assert bad.exit_code == 1 and "no column 'text'" in " ".join(bad.output.split())  # rich wraps lines


def test_score_never_overwrites_a_users_column_nor_the_input(tmp_path):
    from typer.testing import CliRunner

    from chatrlhf.cli import app

    src = tmp_path / "o.csv"
    pd.DataFrame({"reply": ["you are a worthless stupid idiot", "lovely weather"],
                  "toxicity": ["theirs-1", "theirs-2"], "chatrlhf_toxic": [7, 8]}).to_csv(src, index=False)
    before = src.read_bytes()
    ok = CliRunner().invoke(app, ["score", "toxicity", str(src), "--column", "reply"])
    assert ok.exit_code == 0, ok.output
    assert "'toxicity' is already a column" in " ".join(ok.output.split())
    scored = pd.read_csv(tmp_path / "o.scored.csv")
    assert scored["toxicity"].tolist() == ["theirs-1", "theirs-2"] and scored["chatrlhf_toxic"].tolist() == [7, 8]
    assert scored["chatrlhf_toxicity"].iloc[0] > scored["chatrlhf_toxicity"].iloc[1]
    assert scored["toxic"].tolist() == [True, False]  # no clash: the plain name
    same = CliRunner().invoke(app, ["score", "toxicity", str(src), "--column", "reply", "--out", str(src)])
    assert same.exit_code == 1 and "is the input file" in " ".join(same.output.split())
    assert src.read_bytes() == before
