"""`chatrlhf score`: score outputs that already exist (csv, jsonl or parquet), row by row.

    chatrlhf score toxicity outputs.jsonl --column response --group-by model
    chatrlhf score truthfulness outputs.csv --question-column question --answer-column answer

The scores are written beside each row in FILE.scored.<ext> (or --out), and a summary (mean per
group) is printed and written to <out>.summary.json. Truthfulness looks each question up in
TruthfulQA (exact text match after whitespace/case normalisation) and applies the offline judge
of `evaluate.truthfulness`; questions not in TruthfulQA get no score and are counted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from chatrlhf.lm.data import iter_jsonl

console = Console(stderr=True)
READERS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def read_table(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .csv, .jsonl or .parquet")
    if kind == "csv":
        return pd.read_csv(path)
    if kind == "parquet":
        return pd.read_parquet(path)
    return pd.DataFrame([row for _, row in iter_jsonl(path)])


def write_table(df: pd.DataFrame, path: Path) -> None:
    kind = READERS.get(path.suffix.lower(), "jsonl")
    if kind == "csv":
        df.to_csv(path, index=False)
    elif kind == "parquet":
        df.to_parquet(path, index=False)
    else:
        path.write_text("".join(json.dumps(r, default=str) + "\n" for r in df.to_dict("records")))


def _require(df: pd.DataFrame, path: Path, *cols: str | None) -> None:
    for c in cols:
        if c is not None and c not in df.columns:
            raise ValueError(f"{path}: no column {c!r}; columns are {list(df.columns)}")


def _default_out(path: Path) -> Path:
    return path.with_name(f"{path.stem}.scored{path.suffix}")


def score_columns(df: pd.DataFrame, names: list[str]) -> dict[str, str]:
    """Where each score goes: its own name, or `chatrlhf_<name>` (then `_2`, `_3`...) when the file
    already has a column of that name; the user's columns are never overwritten."""
    out: dict[str, str] = {}
    for name in names:
        col, k = name, 1
        while col in df.columns or col in out.values():
            k += 1
            col = f"chatrlhf_{name}" if k == 2 else f"chatrlhf_{name}_{k - 1}"
        if col != name:
            console.print(f"[yellow]{name!r} is already a column of the input: its values are kept and the "
                          f"score is written as {col!r}[/yellow]")
        out[name] = col
    return out


def _check_out(path: Path, out: Path | None) -> None:
    """The input file is read, never written."""
    if out is not None and Path(out).resolve() == Path(path).resolve():
        raise ValueError(f"--out {out} is the input file; scores are written to another file (default "
                         f"{_default_out(Path(path))})")


def summarise(df: pd.DataFrame, score_cols: list[str], group_by: str | None) -> dict[str, dict[str, float]]:
    """Mean of each score column overall and per value of `group_by`, with row counts."""
    def one(d: pd.DataFrame) -> dict[str, float]:
        return {"n": float(len(d)), **{c: float(pd.to_numeric(d[c], errors="coerce").mean()) for c in score_cols}}

    out = {"all": one(df)}
    if group_by:
        for key, d in df.groupby(group_by, sort=True):
            out[str(key)] = one(d)
    return out


def _finish(df: pd.DataFrame, path: Path, out: Path | None, cols: list[str], group_by: str | None
            ) -> dict[str, dict[str, float]]:
    out = Path(out) if out else _default_out(Path(path))
    write_table(df, out)
    summary = summarise(df, cols, group_by)
    out.with_name(out.name + ".summary.json").write_text(json.dumps(summary, indent=1))
    table = Table(title=f"{path} -> {out}")
    table.add_column(group_by or "group")
    for c in ["n", *cols]:
        table.add_column(c, justify="right")
    for g, m in summary.items():
        table.add_row(g, *[f"{m[c]:.0f}" if c == "n" else f"{m[c]:.3f}" for c in ["n", *cols]])
    console.print(table)
    return summary


def score_toxicity_file(file: Path, column: str = "text", group_by: str | None = None,
                        out: Path | None = None) -> dict[str, dict[str, float]]:
    """Adds `toxicity` (probability) and `toxic` (>= 0.5) to each row."""
    from chatrlhf.evaluate.toxicity import TOXIC_THRESHOLD, load_classifier

    _check_out(Path(file), out)
    df = read_table(Path(file))
    _require(df, Path(file), column, group_by)
    scores = load_classifier().score(df[column].fillna("").astype(str).tolist())
    name = score_columns(df, ["toxicity", "toxic"])
    df[name["toxicity"]] = np.round(scores, 5)
    df[name["toxic"]] = scores >= TOXIC_THRESHOLD
    return _finish(df, Path(file), out, [name["toxicity"], name["toxic"]], group_by)


def _norm(q: str) -> str:
    return " ".join(str(q).lower().split())


def score_truthfulness_file(file: Path, question_column: str = "question", answer_column: str = "answer",
                            group_by: str | None = None, out: Path | None = None,
                            truthfulqa_dir: Path | None = None) -> dict[str, dict[str, float]]:
    """Adds `truthful`, `informative`, `sim_correct`, `sim_incorrect` (empty when the question is unknown)."""
    from chatrlhf.evaluate.truthfulness import judge, load_truthfulqa

    _check_out(Path(file), out)
    df = read_table(Path(file))
    _require(df, Path(file), question_column, answer_column, group_by)
    tqa_dir = Path(truthfulqa_dir) if truthfulqa_dir else Path("../shared/data/truthfulqa")
    if not (tqa_dir / "TruthfulQA.csv").is_file():
        raise FileNotFoundError(f"TruthfulQA not found at {tqa_dir}: truthfulness needs its reference answers")
    refs = {_norm(it.question): it for it in load_truthfulqa(tqa_dir)}
    known = [i for i, q in enumerate(df[question_column]) if _norm(q) in refs]
    cols: dict[str, list[Any]] = {k: [None] * len(df) for k in ("truthful", "informative", "sim_correct", "sim_incorrect")}
    if known:
        its = [refs[_norm(df[question_column].iloc[i])] for i in known]
        answers = [str(df[answer_column].iloc[i]) if pd.notna(df[answer_column].iloc[i]) else "" for i in known]
        for i, v in zip(known, judge([(it.correct, it.incorrect, it.best) for it in its], answers)):
            for k in cols:
                cols[k][i] = v[k]
    name = score_columns(df, list(cols))
    for k, v in cols.items():
        df[name[k]] = v
    if len(known) < len(df):
        console.print(f"[yellow]{len(df) - len(known)} of {len(df)} questions are not in TruthfulQA: left unscored[/yellow]")
    return _finish(df, Path(file), out, [name["truthful"], name["informative"]], group_by)
