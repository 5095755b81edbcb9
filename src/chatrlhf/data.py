"""Data loaders: text corpora for pre-training (conversations, rankings and pairs follow below).

Every loader reads local files (.txt/.jsonl/.csv/.parquet, optionally gzipped) or a `datasets`
name, and fails with the file, line and field at fault: a silently skipped row is a silently
different dataset.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".parquet")


class DataError(ValueError):
    """A data problem (a file that cannot be read as asked, a malformed row), with the source, line
    and field named. The project's one data error: rankings.RankingError is a kind of it."""


def _suffix(path: Path) -> str:
    """'.jsonl' for corpus.jsonl and corpus.jsonl.gz alike."""
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return suffixes[-1].lower() if suffixes else ""


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def iter_jsonl(path: str | Path, objects_only: bool = True) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line of a .jsonl(.gz) file; a bad line raises
    DataError naming file:line, so the user can open the file at the right place. The one jsonl
    reader of the project. With `objects_only=False` non-object rows are yielded too, for callers
    that check row shape themselves with a message of their own."""
    path = Path(path)
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if objects_only and not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All JSON objects of a .jsonl(.gz) file."""
    return [row for _, row in iter_jsonl(path)]


# --- text corpora (pre-training) ----------------------------------------------------------------


@dataclass
class TextCorpus:
    """Documents for pre-training, already split; `source` says where they came from."""

    train: list[str]
    val: list[str]
    source: str


def _text_of(row: dict[str, Any], column: str, where: str) -> str:
    if column not in row:
        raise DataError(f"{where}: no field '{column}' (fields: {', '.join(map(str, row))}); "
                        f"set pretrain.text_column")
    value = row[column]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{column}' is {type(value).__name__}, expected text")
    return value


def split_paragraph_docs(text: str) -> list[str]:
    """Plain text -> documents at blank lines (TinyStories, Shakespeare speeches, WikiText paragraphs)."""
    docs, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line)
        elif current:
            docs.append("\n".join(current))
            current = []
    if current:
        docs.append("\n".join(current))
    return docs


def read_text_file(path: str | Path, text_column: str = "text") -> list[str]:
    """Documents of a local .txt/.jsonl/.csv/.parquet file (gzip allowed), empty ones dropped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"text corpus not found: {path}")
    kind = _suffix(path)
    if kind == ".txt":
        with _open_text(path) as f:
            docs = split_paragraph_docs(f.read())
    elif kind in (".jsonl", ".json"):
        docs = [_text_of(r, text_column, f"{path}:{i}") for i, r in iter_jsonl(path)]
    elif kind == ".csv":
        docs = _read_csv_column(path, text_column)
    elif kind == ".parquet":
        docs = _read_parquet_column(path, text_column)
    else:
        raise DataError(f"{path}: unsupported corpus type '{kind}' (use one of {', '.join(TEXT_SUFFIXES)})")
    return [d for d in docs if d.strip()]


def _read_csv_column(path: Path, column: str) -> list[str]:
    csv.field_size_limit(10**9)  # long documents are the point of a corpus
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        fields = [c.lstrip("\ufeff") for c in reader.fieldnames or []]
        if column not in fields:
            raise DataError(f"{path}: no column '{column}' (columns: {', '.join(fields)}); set pretrain.text_column")
        reader.fieldnames = fields  # drop a UTF-8 BOM from the first header
        return [row[column] or "" for row in reader]


def _read_parquet_column(path: Path, column: str) -> list[str]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if column not in table.column_names:
        raise DataError(f"{path}: no column '{column}' (columns: {', '.join(table.column_names)}); "
                        "set pretrain.text_column")
    return [v or "" for v in table.column(column).to_pylist()]


def read_dataset_texts(name: str, split: str, text_column: str = "text") -> list[str]:
    """Texts of a `datasets` dataset ('name' or 'name:config'), from the local cache when offline."""
    import datasets

    path, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(path, config or None, split=split)
    except Exception as e:  # datasets raises many types; the user needs the name and the cause
        raise DataError(f"cannot load dataset '{name}' split '{split}': {e}") from None
    if text_column not in ds.column_names:
        raise DataError(f"dataset '{name}': no column '{text_column}' (columns: {', '.join(ds.column_names)}); "
                        "set pretrain.text_column")
    return [t for t in ds[text_column] if t and t.strip()]


def holdout_split(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic train/val split: every k-th document goes to val (spread over the corpus)."""
    if len(docs) < 2 or val_fraction <= 0:
        return docs, []
    every = max(2, round(1 / val_fraction))
    train = [d for i, d in enumerate(docs) if i % every != every - 1]
    val = [d for i, d in enumerate(docs) if i % every == every - 1]
    return train, val


def load_text_corpus(data: str | None, world_dir: str | Path, text_column: str = "text",
                     val_fraction: float = 0.05) -> TextCorpus:
    """The pre-training corpus: None = the world's corpus_{train,val}.jsonl, else a local file, or a
    `datasets` name or local dataset directory. Sources without a validation split hold out
    `val_fraction` of documents."""
    if data is None:
        world = Path(world_dir)
        train_file, val_file = world / "corpus_train.jsonl", world / "corpus_val.jsonl"
        if not train_file.is_file():
            raise DataError(f"world corpus not found: {train_file}; run `chatrlhf world` first "
                            "or set pretrain.data to a text file or datasets name")
        val = read_text_file(val_file, "text") if val_file.is_file() else []
        return TextCorpus(read_text_file(train_file, "text"), val, str(world))
    path = Path(data)
    if path.is_file() or (not path.exists() and _suffix(path) in TEXT_SUFFIXES):
        train, val = holdout_split(read_text_file(path, text_column), val_fraction)
        return TextCorpus(train, val, str(path))
    # a hub name or a local dataset directory (e.g. train.jsonl + validation.jsonl), via `datasets`
    train = read_dataset_texts(data, "train", text_column)
    try:
        val = read_dataset_texts(data, "validation", text_column)
    except DataError:
        train, val = holdout_split(train, val_fraction)
    return TextCorpus(train, val, data)
