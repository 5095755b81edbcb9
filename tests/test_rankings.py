"""Ranking files: validation with file/line/field errors, ranking -> pairs, 1/C(K,2) weights, loaders."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import shared_data

from chatrlhf.lm.data import DataError
from chatrlhf.lm.rankings import (
    RankingError,
    check_ranks,
    expand_pairs,
    labeler_agreement,
    load_comparisons,
    make_batch,
    parse_hh_transcript,
    ranking_pairs,
    split_by_prompt,
    to_competition,
)
from chatrlhf.rl.losses import ranking_loss

MSG = [{"role": "user", "content": "Where does Zorbel live?"}]


def cmp(responses, *rankings, **extra):
    return {"id": "c", "messages": MSG, "responses": responses,
            "rankings": [{"labeler": f"L{i}", "ranks": r} for i, r in enumerate(rankings)], **extra}


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --- ranking -> pairs -----------------------------------------------------------------------


def test_ranking_of_k_gives_all_c_k_2_ordered_pairs():
    ranks = [2, 4, 1, 3]  # best: response 2, then 0, 3, 1
    pairs = ranking_pairs(ranks)
    assert len(pairs) == math.comb(4, 2)
    assert set(pairs) == {(2, 0), (2, 3), (2, 1), (0, 3), (0, 1), (3, 1)}


@pytest.mark.parametrize("k", [4, 5, 9])
def test_pairs_weighted_one_over_c_k_2_so_each_ranking_weighs_one(k):
    pairs = expand_pairs(cmp([f"r{i}" for i in range(k)], list(range(1, k + 1))), group=0)
    assert len(pairs) == math.comb(k, 2)
    assert all(p.weight == pytest.approx(1 / math.comb(k, 2)) for p in pairs)
    assert sum(p.weight for p in pairs) == pytest.approx(1.0)


def test_ties_give_no_pair_and_keep_the_c_k_2_weight():
    pairs = expand_pairs(cmp(["a", "b", "c", "d"], [1, 2, 2, 4]), group=0)
    assert {(p.chosen, p.rejected) for p in pairs} == {(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)}  # (1, 2) tied
    assert all(p.weight == pytest.approx(1 / 6) for p in pairs)


def test_partial_ranking_uses_ranked_responses_and_their_k():
    pairs = expand_pairs(cmp(["a", "b", "c", "d"], [2, None, 1, None]), group=0)
    assert [(p.chosen, p.rejected, p.weight) for p in pairs] == [(2, 0, 1.0)]


def test_several_labelers_share_the_prompt_weight_and_held_out_ones_are_excluded():
    c = cmp(["a", "b", "c"], [1, 2, 3], [3, 2, 1])
    assert sum(p.weight for p in expand_pairs(c, 0)) == pytest.approx(1.0)  # 2 rankings x 3 pairs x 1/6
    only = expand_pairs(c, 0, exclude_labelers={"L1"})
    assert {p.labeler for p in only} == {"L0"} and sum(p.weight for p in only) == pytest.approx(1.0)


def test_batch_keeps_a_prompts_pairs_together_and_scores_each_response_once():
    comps = [cmp(["a", "b", "c", "d"], [1, 2, 3, 4]), cmp(["x", "y"], [2, 1])]
    b = make_batch(comps)
    assert b.sequences == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]  # K forward passes, not 2*C(K,2)
    assert b.n_groups == 2 and len(b.chosen) == 6 + 1
    assert (b.chosen[-1], b.rejected[-1], b.weight[-1]) == (5, 4, 1.0)


def test_ranking_loss_matches_hand_computation_and_weights_prompts_equally():
    # prompt A: K=3, all 3 pairs margin 1; prompt B: K=2, one pair margin -1.
    ch = torch.tensor([1.0, 1.0, 1.0, 0.0])
    rj = torch.tensor([0.0, 0.0, 0.0, 1.0])
    w = torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0])
    expected = (-math.log(1 / (1 + math.exp(-1))) - math.log(1 / (1 + math.exp(1)))) / 2
    assert ranking_loss(ch, rj, w, n_groups=2).item() == pytest.approx(expected, rel=1e-6)
    assert ranking_loss(ch, rj, w).item() == pytest.approx(expected, rel=1e-6)  # sum(w) = number of rankings
    # a big-K prompt does not outweigh a K=2 one: its mean pair loss counts once
    assert ranking_loss(torch.tensor([5.0]), torch.tensor([-5.0]), torch.tensor([1.0])).item() < 1e-4


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("ranks,msg", [
    ([1, 2, 3], "one rank per response"),
    ([1, 3, 4, 5], "not a ranking"),
    ([0, 1, 2, 3], "not a ranking"),
    ([1, 2, 2, 3], "not a ranking"),   # dense ties are ambiguous: competition ranks 1, 2, 2, 4 expected
    ([1, None, None, None], "K < 2"),
    ([1, "2", 3, 4], "integers"),
])
def test_check_ranks_rejects_malformed(ranks, msg):
    assert msg in check_ranks(ranks, 4)


def test_all_tied_ranking_is_valid_and_gives_no_pairs():
    # a policy often samples K identical answers; the labeler ties them all and nothing is learned
    assert check_ranks([1, 1, 1, 1], 4) is None
    assert "duplicate rank" in check_ranks([1, 1, 1, 1], 4, allow_ties=False)
    assert ranking_pairs([1, 1, 1, 1]) == []


def test_duplicate_ranks_rejected_when_ties_are_off():
    assert "duplicate rank" in check_ranks([1, 1, 3, 4], 4, allow_ties=False)
    assert check_ranks([1, 1, 3, 4], 4) is None


@pytest.mark.parametrize("row,field", [
    (cmp(["a"], [1]), "'responses': K = 1 < 2"),
    (cmp(["a", None, "c"], [1, 2, 3]), "'responses[1]': missing response"),
    (cmp(["a", "b", "c"], [1, 2, 2, 4]), "'rankings[0].ranks'"),
    (cmp(["a", "b", "c"], [1, 1, 3], [1, 3, 3]), "'rankings[1].ranks'"),
    ({"responses": ["a", "b"]}, "'messages'"),
])
def test_malformed_file_names_file_line_and_field(tmp_path, row, field):
    p = write_jsonl(tmp_path / "cmp.jsonl", [cmp(["a", "b"], [1, 2]), row])
    with pytest.raises(RankingError) as e:
        load_comparisons(p)
    assert f"{p}:2:" in str(e.value) and field in str(e.value)


def test_bad_json_names_line(tmp_path):
    p = write_jsonl(tmp_path / "cmp.jsonl", [cmp(["a", "b"], [1, 2]), "", "{oops"])
    with pytest.raises(DataError, match=r"cmp.jsonl:3: not valid JSON"):
        load_comparisons(p)


def test_every_data_problem_is_one_error_class(tmp_path):
    """A caller catches DataError once for a bad comparison, conversation or corpus line alike."""
    from chatrlhf.lm import conversations

    assert conversations.DataError is DataError
    p = write_jsonl(tmp_path / "cmp.jsonl", [cmp(["a", "b"], [1, 1, 2])])
    with pytest.raises(DataError, match=r"cmp.jsonl:1:"):
        load_comparisons(p)


def test_to_competition_and_split_by_prompt():
    assert to_competition([0, 2, 1, None]) == [1, 3, 2, None]
    assert to_competition([3, 3, 1]) == [2, 2, 1]
    comps = [dict(cmp(["a", "b"], [1, 2]), prompt_id=f"p{i % 10}") for i in range(40)]
    train, val = split_by_prompt(comps, 0.2, seed=0)
    assert len(val) == 8 and not {c["prompt_id"] for c in train} & {c["prompt_id"] for c in val}


def test_labeler_agreement_counts_strict_pairs():
    c = cmp(["a", "b", "c"], [1, 2, 3], [1, 3, 2], [2, 2, 1])
    rate, n = labeler_agreement([c], {"L0", "L1"})
    assert (rate, n) == (pytest.approx(2 / 3), 3)


# --- pairwise and real data -----------------------------------------------------------------


def test_pairwise_rows_load_as_k2_comparisons(tmp_path):
    hh = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me\n\nAssistant: "
    p = tmp_path / "pairs.jsonl.gz"
    with gzip.open(p, "wt") as f:
        f.write(json.dumps({"chosen": hh + "Sure.", "rejected": hh + "No."}) + "\n")
        f.write(json.dumps({"prompt": "Say hi", "chosen": "Hi!", "rejected": "..."}) + "\n")
    a, b = load_comparisons(p)
    assert a["messages"] == parse_hh_transcript(hh + "x")[:-1] and a["responses"] == ["Sure.", "No."]
    assert b["messages"] == [{"role": "user", "content": "Say hi"}] and b["rankings"][0]["ranks"] == [1, 2]


def test_trl_conversational_pairs_load_with_an_implicit_or_explicit_prompt(tmp_path):
    """TRL's preference datasets: chosen and rejected as chat messages, the prompt their shared turns
    (implicit) or its own `prompt` list (explicit); a pair that does not share its turns, or a
    conversation that does not end with the assistant, is refused naming the line and field."""
    user = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    rows = [{"chosen": [*user, {"role": "assistant", "content": "4"}], "rejected": [*user, {"role": "assistant", "content": "5"}]},
            {"prompt": user, "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "22"}]}]
    p = tmp_path / "trl.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = load_comparisons(p)
    assert a["messages"] == b["messages"] == user and a["responses"] == ["4", "5"] and b["responses"] == ["4", "22"]
    assert a["rankings"][0]["ranks"] == [1, 2]
    other = [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]
    for row, field in [({"chosen": rows[0]["chosen"], "rejected": other}, "chosen'/'rejected"),
                       ({"chosen": user, "rejected": rows[0]["rejected"]}, "chosen")]:
        p.write_text(json.dumps(row) + "\n")
        with pytest.raises(RankingError, match=f"trl.jsonl:1: field '{field}'"):
            load_comparisons(p)


def test_oasst_trees_give_the_documented_ranked_groups():
    comps = load_comparisons(shared_data("openassistant_oasst_sample/en_100_tree.jsonl"))
    full = [c for c in comps if None not in c["rankings"][0]["ranks"]]
    assert len(full) == 211
    assert sum(math.comb(len(c["responses"]), 2) for c in full) == 751
    assert all(c["messages"][-1]["role"] == "user" for c in comps)


def test_hh_rlhf_harmless_loads():
    comps = load_comparisons(shared_data("hh_rlhf/harmless-base/test.jsonl.gz"))
    assert len(comps) == 2312 and all(len(c["responses"]) == 2 for c in comps)
