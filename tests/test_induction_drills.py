"""bench/induction_drills.py: pre-training drills whose words recur, written from a world's corpus."""

from __future__ import annotations

import json
import random
import sys

import pytest
from conftest import bench_module


def _drills():
    return bench_module("induction_drills")


def _recurs(words: list[str], n: int) -> bool:
    """Whether some stretch of n words occurs twice."""
    seen = set()
    for i in range(len(words) - n + 1):
        key = tuple(words[i:i + n])
        if key in seen:
            return True
        seen.add(key)
    return False


def test_drill_repeats_stretches_of_its_own_words():
    mod = _drills()
    words = [f"w{i}" for i in range(500)]
    text = mod.drill(random.Random(0), words)
    seq = text.split()
    assert len(seq) >= 90 and set(seq) <= set(words)
    assert _recurs(seq, 3), "with repeat 0.5 a 90-word drill has a recurring stretch"
    never = mod.drill(random.Random(0), words, repeat=0.0).split()
    assert not _recurs(never, 3), "with repeat 0 no stretch of 500 random words should recur"
    long = mod.drill(random.Random(1), words, repeat=1.0, stretch=(10, 12)).split()
    assert _recurs(long, 10)


def test_files_from_a_world(tmp_path, monkeypatch):
    world = tmp_path / "world"
    world.mkdir()
    docs = ["The Found drum is painted violet.", "Zamstead is famous for bell towers."]
    (world / "corpus_train.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = tmp_path / "drills"
    argv = ["induction_drills.py", str(world), str(out), "--drills", "5", "--mix-drills", "3", "--corpus-copies", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    _drills().main()
    drills = [json.loads(line)["text"] for line in (out / "drills.jsonl").read_text().splitlines()]
    mix = [json.loads(line)["text"] for line in (out / "mix.jsonl").read_text().splitlines()]
    corpus_words = {w for d in docs for w in d.rstrip(".").replace(".", "").split()}
    assert len(drills) == 5 and all(set(d.split()) <= corpus_words for d in drills)
    assert mix[:4] == docs + docs and len(mix) == 7
    assert mix[4:] == drills[:3], "each file is written from the same seed"


def test_warmup_scores_only_the_words_reading_predicts(tiny_model_dir):
    from transformers import AutoTokenizer

    warmup = bench_module("induction_warmup")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    words = ["apple", "pear", "plum", "teal", "baker", "colour", "capital", "request"]
    rng = random.Random(0)
    seq, known = bench_module("induction_drills").drill_words(random.Random(0), words)
    ids, scored = warmup.drill_tokens(tok, rng, words)
    assert len(ids) == len(scored) >= len(seq), "every word is at least one token"
    # the scored tokens, decoded word by word, are the predictable words, in order
    pieces, cur = [], []
    for i, s in zip(ids, scored):
        if s:
            cur.append(i)
        elif cur:
            pieces.append(tok.decode(cur).split())
            cur = []
    if cur:
        pieces.append(tok.decode(cur).split())
    assert [w for p in pieces for w in p] == [w for w, k in zip(seq, known) if k]
    x, y = warmup.DrillRows(tok, words, seed=0).batch(3)
    assert x.shape == y.shape == (3, 128)
    assert 0 < (y != -100).float().mean() < 1
    assert torch_equal_where_scored(x, y)


def torch_equal_where_scored(x, y) -> bool:
    """Each scored target is the next input token."""
    nxt, tgt = x[:, 1:], y[:, :-1]
    mask = tgt != -100
    return bool((nxt[mask] == tgt[mask]).all())


def test_random_token_rows_span_the_tokenizers_ordinary_tokens_and_score_only_recurrences(tiny_model_dir):
    """--random-tokens: the synthetic induction rows over every ordinary token (no special ones); each
    scored target is a token whose context already showed it after the same previous token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    x, y = bench_module("induction_warmup").TokenRows(tok, seed=0).batch(8)
    assert x.shape == y.shape == (8, 128)
    assert int(x.min()) >= len(tok.all_special_ids) and int(x.max()) < len(tok)
    assert 0 < (y != -100).float().mean() < 0.6
    assert torch_equal_where_scored(x, y)
    for row, tgt in zip(x.tolist(), y.tolist()):
        for i, t in enumerate(tgt):
            if t != -100:  # the bigram (row[i], t) occurred earlier in the row: reading the context predicts it
                assert any(row[j] == row[i] and row[j + 1] == t for j in range(i))


def test_the_masked_mix_loss_is_the_mean_over_every_scored_token(tiny_model_dir):
    """bench/induction_mix.py: a step's loss weighs each scored token once, corpus rows (all scored)
    and drill rows (recurring words only) alike; the unscored drill tokens add nothing."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    mix = bench_module("induction_mix")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(10, 300, (4, 16), generator=g)
    y = torch.randint(10, 300, (4, 16), generator=g)
    y[2:, ::3] = -100  # drill rows: a third of their tokens unscored
    loss, corpus, drills = mix.step_losses(model, x, y, n_corpus=2)
    logits = model(input_ids=x).logits
    per_token = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="none").view_as(y)
    scored = y != -100
    assert float(loss) == pytest.approx(float(per_token[scored].mean()), rel=1e-5)
    assert corpus == pytest.approx(float(per_token[:2].mean()), rel=1e-5)
    assert drills == pytest.approx(float(per_token[2:][scored[2:]].mean()), rel=1e-5)
