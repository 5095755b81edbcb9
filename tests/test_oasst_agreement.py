"""Per-language agreement of OpenAssistant rankings with the thumbs on the same replies."""

from __future__ import annotations

import gzip
import json

import pytest
from conftest import shared_data
from typer.testing import CliRunner

from chatrlhf.cli import app
from chatrlhf.evaluate.oasst_agreement import language_agreement, read_trees


def reply(rank, up=0, down=0, lang="en", replies=()):
    return {"role": "assistant", "lang": lang, "rank": rank, "emojis": {"+1": up, "-1": down}, "replies": list(replies)}


def tree(tid, lang, replies):
    return {"message_tree_id": tid, "prompt": {"role": "prompter", "lang": lang, "replies": replies}}


def test_agreement_per_language_counts_pairs_ties_and_nested_turns():
    trees = [
        # en: ranks 0 < 1 < 2 with thumbs 3 > 1 > -1: all three pairs agree
        tree("t1", "en", [reply(0, 3), reply(1, 1), reply(2, 0, 1)]),
        # de: the best-ranked has fewer thumbs (disagree); a second turn below has a thumbs tie
        tree("t2", "de", [reply(0, 0, 2, "de", replies=[{"role": "prompter", "lang": "de", "replies": [
            reply(0, 1, 0, "de"), reply(1, 1, 0, "de")]}]), reply(1, 2, 0, "de")]),
        # an unranked reply and a deleted one are no pair
        tree("t3", "en", [reply(0, 5), reply(None, 0), {**reply(1, 9), "deleted": True}]),
    ]
    got = language_agreement(trees)
    assert set(got) == {"de", "en"}
    assert got["en"]["pairs"] == 3 and got["en"]["thumb_ties"] == 0 and got["en"]["agreement"] == 1.0
    assert got["de"]["pairs"] == 2 and got["de"]["thumb_ties"] == 1 and got["de"]["agreement"] == 0.0
    assert got["en"]["trees"] == 1  # t3 adds no pair


def test_the_shared_openassistant_sample(tmp_path):
    path = shared_data("openassistant_oasst_sample/en_100_tree.jsonl")
    got = language_agreement(read_trees(path))
    assert set(got) == {"en"}  # the shared sample is 100 English trees
    en = got["en"]
    assert en["pairs"] == 754 and en["thumb_ties"] == 197
    assert en["low"] < en["agreement"] < en["high"] and 0.5 < en["low"]  # the two labels agree more than chance
    gz = tmp_path / "trees.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    out = tmp_path / "agreement.json"
    r = CliRunner().invoke(app, ["score", "oasst-agreement", str(gz), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"en: agreement {en['agreement']:.3f}" in r.output and json.loads(out.read_text())["en"]["pairs"] == 754


def test_a_missing_file_is_a_clear_error(tmp_path):
    r = CliRunner().invoke(app, ["score", "oasst-agreement", str(tmp_path / "nope.jsonl")])
    assert r.exit_code != 0 and "nope.jsonl" in r.output
    with pytest.raises(FileNotFoundError):
        read_trees(tmp_path / "nope.jsonl")
