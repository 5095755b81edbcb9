"""Comparison data for the reward model: K-way rankings, pairs, validation, batching.

Sources, all turned into the comparison dict of docs/ARCHITECTURE.md
(`{"id", "messages", "responses", "rankings": [{"labeler", "ranks"}], ...}`):
  - comparison files written by `chatrlhf sample` and filled by labelers (jsonl),
  - pairwise files, HH-RLHF style (`chosen`/`rejected`, full transcripts or with `prompt`/`messages`)
    or TRL's conversational pairs (`chosen`/`rejected` chat messages, with or without a `prompt`):
    a pair is a comparison with K = 2 and ranks [1, 2],
  - OpenAssistant message trees (`message_tree_id`): each prompter node with >= 2 ranked replies.

Ranks (1 = best) use competition ranking: ties share a rank and the next rank skips (1, 2, 2, 4).
Ties give no pair (an all-tied ranking, e.g. of K identical samples, is valid and gives none). `null` marks a response that a labeler did not rank (a partial ranking): pairs come
from the ranked ones only, and K in the 1/C(K,2) weight counts the ranked ones. Ranking -> pairs
(InstructGPT): every i, j with ranks[i] < ranks[j] is (chosen=i, rejected=j), weighted
1/(C(K,2) * R) where R is the number of rankings of that comparison, so a prompt weighs the same
whatever its K or its number of labelers. All pairs of a comparison go in the same batch.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from math import comb
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from chatrlhf.lm import data
from chatrlhf.lm.data import DataError


class RankingError(DataError):
    """A malformed comparison, naming the file, line and field."""


@dataclass
class Pair:
    """One preference, chosen over rejected, indexed into its comparison's responses."""

    group: int  # index of the comparison in the list it came from
    chosen: int
    rejected: int
    weight: float
    labeler: str | None = None


# --- validation -----------------------------------------------------------------------------


def _where(source: str, line: int | None) -> str:
    return f"{source}:{line}" if line is not None else source


def check_ranks(ranks: Any, k: int, allow_ties: bool = True) -> str | None:
    """Why `ranks` is not a valid competition ranking of k responses, or None when it is."""
    if not isinstance(ranks, list) or len(ranks) != k:
        n = len(ranks) if isinstance(ranks, list) else type(ranks).__name__
        return f"needs one rank per response ({k}), got {n}"
    given = [r for r in ranks if r is not None]
    if any(not isinstance(r, int) or isinstance(r, bool) for r in given):
        return f"ranks must be integers (1 = best) or null, got {ranks}"
    if len(given) < 2:
        return f"fewer than 2 responses ranked (K < 2): {ranks}"
    if len(set(given)) < len(given) and not allow_ties:
        dup = sorted({r for r in given if given.count(r) > 1})
        return f"duplicate rank(s) {dup} in {ranks} and ties are not allowed"
    srt = sorted(given)
    for i, r in enumerate(srt):
        expected_new = i + 1  # competition ranking: a new rank equals 1 + the number ranked above it
        if r != expected_new and not (i > 0 and r == srt[i - 1]):
            return (f"ranks {ranks} are not a ranking: expected {expected_new} in position {i + 1} of the sorted ranks "
                    f"(1 = best; ties share a rank and the next rank skips, e.g. 1, 2, 2, 4)")
    return None  # an all-tied ranking is valid (identical samples happen): it simply yields no pair


def validate_comparison(row: Any, source: str, line: int | None = None, allow_ties: bool = True) -> dict:
    """Check one comparison dict and return it normalised (messages list, rankings list)."""
    at = _where(source, line)
    if not isinstance(row, dict):
        raise RankingError(f"{at}: expected a JSON object, got {type(row).__name__}")
    messages = row.get("messages")
    if messages is None and isinstance(row.get("prompt"), str):
        messages = [{"role": "user", "content": row["prompt"]}]
    if not isinstance(messages, list) or not messages:
        raise RankingError(f"{at}: field 'messages': missing or empty (the context the responses continue)")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise RankingError(f"{at}: field 'messages[{i}]': expected {{'role': str, 'content': str}}, got {m!r}")
    responses = row.get("responses")
    if not isinstance(responses, list):
        raise RankingError(f"{at}: field 'responses': missing or not a list")
    if len(responses) < 2:
        raise RankingError(f"{at}: field 'responses': K = {len(responses)} < 2, nothing to compare")
    for i, r in enumerate(responses):
        if not isinstance(r, str):  # an empty reply is a (bad) response; a null one is missing
            raise RankingError(f"{at}: field 'responses[{i}]': missing response (got {r!r})")
    rankings = row.get("rankings") or []
    if not isinstance(rankings, list):
        raise RankingError(f"{at}: field 'rankings': expected a list of {{'labeler', 'ranks'}}")
    for j, rk in enumerate(rankings):
        if not isinstance(rk, dict) or "ranks" not in rk:
            raise RankingError(f"{at}: field 'rankings[{j}]': expected {{'labeler': str, 'ranks': [...]}}, got {rk!r}")
        why = check_ranks(rk["ranks"], len(responses), allow_ties)
        if why:
            raise RankingError(f"{at}: field 'rankings[{j}].ranks': {why}")
    return {**row, "messages": messages, "responses": responses, "rankings": rankings}


# --- readers --------------------------------------------------------------------------------


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of a comparison file; row shapes are checked by validate_comparison."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"comparison file not found: {p}")
    return data.iter_jsonl(p, objects_only=False)


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_hh_transcript(text: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' -> chat messages."""
    parts = _HH_TURN.split(text)
    msgs = []
    for role, content in zip(parts[1::2], parts[2::2]):
        msgs.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return msgs


def _reply(val: Any, name: str, at: str) -> tuple[list[dict], str] | None:
    """A pair's side: (the turns before the reply, the reply). A string is a reply alone; a list of chat
    messages (TRL's conversational format) ends with the assistant's reply. None: a string holding an
    HH-RLHF transcript, split by the caller."""
    if isinstance(val, str) and val.strip():
        return None if "\n\nHuman:" in val else ([], val)
    if isinstance(val, list) and val and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in val):
        if val[-1]["role"] == "assistant" and isinstance(val[-1]["content"], str):
            return [dict(m) for m in val[:-1]], val[-1]["content"]
        raise RankingError(f"{at}: field '{name}': a conversation must end with the assistant's reply "
                           f"(its last message has role {val[-1]['role']!r})")
    raise RankingError(f"{at}: field '{name}': missing response (got {val!r}); expected a reply, an HH-RLHF transcript "
                       "or a list of chat messages ending with the assistant's reply")


def pair_to_comparison(row: dict, source: str, line: int | None) -> dict:
    """A chosen/rejected row as a K = 2 comparison ranked [1, 2]: replies with a `prompt` (text, or chat
    messages) or `messages`; HH-RLHF transcripts; or TRL's conversational pairs, chosen and rejected
    conversations that share every turn but the assistant's last reply."""
    at = _where(source, line)
    sides = [_reply(row.get(n), n, at) for n in ("chosen", "rejected")]
    prompt = row.get("messages") or row.get("prompt")
    if prompt is not None and None not in sides:
        if isinstance(prompt, str):
            messages = parse_hh_transcript(prompt) if "\n\nHuman:" in prompt else [{"role": "user", "content": prompt}]
        else:
            messages = [dict(m) for m in prompt]
        messages += sides[0][0]  # TRL's explicit prompt: any turns before the reply continue it
        resp_c, resp_r = sides[0][1], sides[1][1]
    elif None not in sides:  # TRL's implicit prompt: two conversations sharing all turns but the last reply
        if sides[0][0] != sides[1][0] or not sides[0][0]:
            raise RankingError(f"{at}: field 'chosen'/'rejected': the two conversations must share every turn before "
                               "the last reply (or give the prompt in 'prompt')")
        messages, resp_c, resp_r = sides[0][0], sides[0][1], sides[1][1]
    else:  # HH-RLHF: two full transcripts sharing all turns but the last assistant reply
        mc, mr = (parse_hh_transcript(row[n]) if isinstance(row[n], str) else [] for n in ("chosen", "rejected"))
        if not mc or not mr or mc[-1]["role"] != "assistant" or mr[-1]["role"] != "assistant":
            raise RankingError(f"{at}: field 'chosen'/'rejected': expected transcripts ending with an Assistant turn")
        messages, resp_c, resp_r = mc[:-1], mc[-1]["content"], mr[-1]["content"]  # an empty reply stays a reply
    return {"id": row.get("id", f"pair-{line:06d}" if line else "pair"), "messages": messages,
            "responses": [resp_c, resp_r], "rankings": [{"labeler": row.get("labeler"), "ranks": [1, 2]}]}


def oasst_tree_comparisons(tree: dict, source: str, line: int) -> list[dict]:
    """Each prompter node of an OpenAssistant tree with >= 2 ranked assistant replies; OASST ranks
    are 0-based, here 1-based; unranked siblings of a ranked group stay as null (partial ranking)."""
    out: list[dict] = []

    def walk(node: dict, history: list[dict]) -> None:
        role = "user" if node.get("role") == "prompter" else "assistant"
        path = [*history, {"role": role, "content": node.get("text", "")}]
        replies = [r for r in node.get("replies", []) if not r.get("deleted")]
        ranked = [r for r in replies if r.get("rank") is not None]
        if role == "user" and len(ranked) >= 2:
            ranks = [r["rank"] + 1 if r.get("rank") is not None else None for r in replies]
            out.append({"id": f"{tree.get('message_tree_id', line)}/{node.get('message_id', len(out))}",
                        "prompt_id": tree.get("message_tree_id"), "messages": path,
                        "responses": [r["text"] for r in replies],
                        "rankings": [{"labeler": "oasst", "ranks": to_competition(ranks)}]})
        for r in replies:
            walk(r, path)

    if not isinstance(tree.get("prompt"), dict):
        raise RankingError(f"{source}:{line}: field 'prompt': expected an OpenAssistant message tree node")
    walk(tree["prompt"], [])
    return out


def to_competition(ranks: list[int | None]) -> list[int | None]:
    """Any order-preserving ranks (0-based, dense, gaps) -> competition ranks 1, 2, 2, 4; None stays."""
    given = [r for r in ranks if r is not None]
    return [None if r is None else 1 + sum(g < r for g in given) for r in ranks]


def competition_ranks(scores_best_high: Iterable[float]) -> list[int]:
    """Scores (higher = better) -> competition ranks (1 = best, ties share)."""
    s = list(scores_best_high)
    return [1 + sum(o > x for o in s) for x in s]


RM_COLUMN_KEYS = ("id", "prompt_id", "prompt", "messages", "chosen", "rejected", "responses", "rankings")
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".json", ".csv", ".parquet")


def check_rm_columns(columns: dict[str, str] | None) -> dict[str, str]:
    """rm.columns with known keys only (lm.data.check_mapping)."""
    return data.check_mapping(columns, "rm.columns", RM_COLUMN_KEYS, "chosen=better", RankingError)


def _mapped(row: Any, columns: dict[str, str], at: str) -> Any:
    """The row with the user's columns under the names the loaders read; JSON text in a csv cell
    (a list of responses, messages, rankings) is parsed."""
    if not isinstance(row, dict):
        return row
    out = dict(row)
    for key, col in columns.items():
        if col not in row:
            raise RankingError(f"{at}: column '{col}' (rm.columns.{key}) is not in the data; "
                               f"columns present: {', '.join(map(str, row))}")
        out[key] = row[col]
    for key in ("messages", "responses", "rankings"):
        v = out.get(key)
        if isinstance(v, str) and v.strip()[:1] in "[{":
            try:
                out[key] = json.loads(v)
            except json.JSONDecodeError as e:
                raise RankingError(f"{at}: field '{key}': not valid JSON ({e.msg})") from None
    return out


def _row_comparisons(row: Any, source: str, n: int | None, allow_ties: bool) -> list[dict]:
    if isinstance(row, dict) and "message_tree_id" in row:
        return [validate_comparison(c, source, n, allow_ties) for c in oasst_tree_comparisons(row, source, n)]
    if isinstance(row, dict) and "chosen" in row and "responses" not in row:
        return [validate_comparison(pair_to_comparison(row, source, n), source, n, allow_ties)]
    return [validate_comparison(row, source, n, allow_ties)]


def load_comparisons(source: str | Path | list[dict], allow_ties: bool = True, columns: dict[str, str] | None = None,
                     split: str = "train") -> list[dict]:
    """Read and validate comparisons from a file (comparison, pairwise or OASST-tree rows; jsonl,
    .gz, csv, parquet or a JSON list), a `datasets` name, or an in-memory list. `columns` maps the
    names the loaders read (RM_COLUMN_KEYS) to the user's column names."""
    if isinstance(source, list):
        return [validate_comparison(r, "<memory>", i + 1, allow_ties) for i, r in enumerate(source)]
    columns = check_rm_columns(columns)
    path = Path(source)
    out: list[dict] = []
    if not path.exists():
        looks_local = str(source).startswith((".", "/", "~")) or str(source).lower().endswith(FILE_SUFFIXES) \
            or "/" not in str(source) or path.parent.is_dir() and str(path.parent) not in ("", ".")
        if looks_local:
            raise RankingError(f"comparison file not found: {path} (rm.data); check the path, relative to "
                               f"{Path.cwd()}")
        rows: Iterable[tuple[str, int, Any]] = _hf_rows(str(source), split)
    elif str(source).lower().endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        rows = ((str(path), n, row) for n, row in iter_jsonl(path))
    else:
        from chatrlhf.lm.conversations import read_rows

        rows = ((where, None, row) for where, row in read_rows(str(path), split))
    for i, (where, n, row) in enumerate(rows):
        row = _mapped(row, columns, where if n is None else f"{where}:{n}")
        if n is not None:
            out.extend(_row_comparisons(row, where, n, allow_ties))
        else:
            out.extend(_row_comparisons_at(row, where, i + 1, allow_ties))
    if not out:
        raise RankingError(f"{source}: no comparisons found")
    return out


def _row_comparisons_at(row: Any, where: str, index: int, allow_ties: bool) -> list[dict]:
    """Comparisons of a row located by `where` (csv line, parquet row): errors name that place."""
    got = _row_comparisons(row, where, None, allow_ties)
    for c in got:
        c.setdefault("id", f"row-{index:06d}")
        if c["id"] == "pair":
            c["id"] = f"pair-{index:06d}"
    return got


def _hf_rows(name: str, split: str) -> Iterator[tuple[str, int, Any]]:
    """Rows of a `datasets` name (offline: the local cache only)."""
    from chatrlhf.lm.conversations import read_rows

    for i, (where, row) in enumerate(read_rows(name, split)):
        yield f"{name}[{split}] row", i + 1, dict(row)


def write_comparisons(comparisons: list[dict], path: str | Path) -> Path:
    """Write jsonl atomically (temp file + rename), so a reader never sees half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for c in comparisons:
            f.write(json.dumps(c, ensure_ascii=False) + "\n")
    tmp.replace(p)
    return p


# --- ranking -> pairs -----------------------------------------------------------------------


def ranking_pairs(ranks: list[int | None]) -> list[tuple[int, int]]:
    """(chosen, rejected) for every i, j with ranks[i] < ranks[j]; ties and unranked give none."""
    idx = [i for i, r in enumerate(ranks) if r is not None]
    return [(i, j) for i in idx for j in idx if ranks[i] < ranks[j]]


def expand_pairs(comparison: dict, group: int, exclude_labelers: set[str] | frozenset = frozenset()) -> list[Pair]:
    """All C(K,2) ordered pairs of each ranking, each weighted 1/(C(K,2) * R) (InstructGPT sec. 3.5)."""
    rankings = [r for r in comparison.get("rankings", []) if r.get("labeler") not in exclude_labelers]
    pairs: list[Pair] = []
    for rk in rankings:
        k = sum(r is not None for r in rk["ranks"])
        w = 1.0 / (comb(k, 2) * len(rankings))
        pairs += [Pair(group, i, j, w, rk.get("labeler")) for i, j in ranking_pairs(rk["ranks"])]
    return pairs


def split_by_prompt(comparisons: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Held-out prompts: a row's own `split` ("train"/"val") wins; otherwise whole prompts (prompt_id, or
    the first message) are drawn at random, so no prompt is in both sides."""
    if any("split" in c for c in comparisons):
        return ([c for c in comparisons if c.get("split", "train") != "val"],
                [c for c in comparisons if c.get("split") == "val"])
    keys = sorted({str(c.get("prompt_id") or c["messages"][0]["content"]) for c in comparisons})
    random.Random(seed).shuffle(keys)
    val_keys = set(keys[: int(round(len(keys) * val_fraction))])
    key = lambda c: str(c.get("prompt_id") or c["messages"][0]["content"])  # noqa: E731
    return [c for c in comparisons if key(c) not in val_keys], [c for c in comparisons if key(c) in val_keys]


@dataclass
class PairBatch:
    """Unique (messages, response) sequences to score once, and pairs indexing into them."""

    sequences: list[tuple[int, int]]  # (position of the comparison in the input list, response index)
    chosen: list[int]
    rejected: list[int]
    weight: list[float]
    n_groups: int


def make_batch(comparisons: list[dict], exclude_labelers: set[str] | frozenset = frozenset()) -> PairBatch:
    """All pairs of these comparisons; each response is scored once (K forward passes per prompt,
    not 2 * C(K,2): the efficiency InstructGPT gets from batching a prompt's pairs together)."""
    seqs: list[tuple[int, int]] = []
    chosen, rejected, weight = [], [], []
    n_groups = 0
    for g, c in enumerate(comparisons):
        pairs = expand_pairs(c, g, exclude_labelers)
        if not pairs:
            continue
        base = len(seqs)
        seqs += [(g, k) for k in range(len(c["responses"]))]
        n_groups += 1
        for p in pairs:
            chosen.append(base + p.chosen)
            rejected.append(base + p.rejected)
            weight.append(p.weight)
    return PairBatch(seqs, chosen, rejected, weight, n_groups)


def pairwise_accuracy(comparisons: list[dict], rewards: list[list[float]], keep) -> tuple[float, int]:
    """Share of ranked pairs (from rankings whose labeler passes `keep`) that the RM orders the same
    way; a reward tie counts half."""
    hit, n = 0.0, 0
    for c, r in zip(comparisons, rewards):
        for rk in c.get("rankings", []):
            if not keep(rk.get("labeler")):
                continue
            for i, j in ranking_pairs(rk["ranks"]):
                hit += 1.0 if r[i] > r[j] else 0.5 if r[i] == r[j] else 0.0
                n += 1
    return (hit / n if n else float("nan")), n


def calibration(comparisons: list[dict], rewards: list[list[float]], keep, bins: int = 10) -> dict[str, Any]:
    """Bradley-Terry says P(i preferred to j) = sigmoid(r_i - r_j). Each pair is used in both
    orientations; ECE is the count-weighted gap between predicted and observed per bin."""
    pred, obs = [], []
    for c, r in zip(comparisons, rewards):
        for rk in c.get("rankings", []):
            if keep(rk.get("labeler")):
                for i, j in ranking_pairs(rk["ranks"]):
                    p = 1.0 / (1.0 + math.exp(-(r[i] - r[j])))
                    pred += [p, 1.0 - p]
                    obs += [1.0, 0.0]
    if not pred:
        return {"ece": float("nan"), "bins": []}
    pred_a, obs_a = np.array(pred), np.array(obs)
    which = np.minimum((pred_a * bins).astype(int), bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            gap = abs(pred_a[sel].mean() - obs_a[sel].mean())
            ece += sel.mean() * gap
            table.append({"bin": b, "predicted": float(pred_a[sel].mean()), "observed": float(obs_a[sel].mean()),
                          "n": int(sel.sum())})
    return {"ece": float(ece), "bins": table}


def labeler_agreement(comparisons: list[dict], labelers: set[str] | None = None) -> tuple[float, int]:
    """Inter-labeler agreement (InstructGPT sec. 3.4): over every two rankings of the same comparison,
    the share of pairs strictly ordered by both that they order the same way. Returns (rate, n)."""
    agree = total = 0
    for c in comparisons:
        rks = [r["ranks"] for r in c.get("rankings", []) if labelers is None or r.get("labeler") in labelers]
        for a in range(len(rks)):
            for b in range(a + 1, len(rks)):
                for i, j in ranking_pairs(rks[a]):
                    if rks[b][i] is None or rks[b][j] is None or rks[b][i] == rks[b][j]:
                        continue
                    total += 1
                    agree += rks[b][i] < rks[b][j]
    return (agree / total if total else float("nan")), total


def assign_splits(prompts: list[dict], val_fraction: float, rng: random.Random) -> list[str]:
    """'val' for about val_fraction of prompts, else 'train'. Whole content clusters (a world prompt's
    `cluster`: the entity, list or request it asks about; else the prompt alone) go to one side, so
    validation prompts ask nothing the training prompts ask; clusters are drawn per kind (the part
    before ':') so every kind is represented. At least one val prompt when any is asked for."""
    n = len(prompts)
    if val_fraction <= 0 or n < 2:
        return ["train"] * n
    keys = [str(p.get("cluster") or f"prompt:{i}") for i, p in enumerate(prompts)]
    if len(set(keys)) < 2:  # one cluster cannot be split by content: split its prompts
        keys = [f"prompt:{i}" for i in range(n)]
    members: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        members.setdefault(k, []).append(i)
    kinds: dict[str, list[str]] = {}
    for k in sorted(members):
        kinds.setdefault(k.split(":", 1)[0], []).append(k)
    val: set[int] = set()
    for kind in sorted(kinds):
        clusters = kinds[kind]
        rng.shuffle(clusters)
        target, got = val_fraction * sum(len(members[k]) for k in clusters), 0
        for k in clusters:
            if got + len(members[k]) / 2 <= target:
                val.update(members[k])
                got += len(members[k])
    if not val:
        val.update(members[min(members, key=lambda k: (len(members[k]), k))])
    if len(val) == n:
        val.difference_update(members[keys[0]])
    return ["val" if i in val else "train" for i in range(n)]


# --- sampling -------------------------------------------------------------------------------
