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

import torch
import torch.nn.functional as F

from chatrlhf.lm.tokenizer import document_eos

TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".parquet")


class DataError(ValueError):
    """A data problem (a file that cannot be read as asked, a malformed row), with the source, line
    and field named. The project's one data error: rankings.RankingError is a kind of it."""


def check_mapping(columns: dict[str, str] | None, key: str, known: list[str], example: str,
                  error: type[DataError] = DataError) -> dict[str, str]:
    """A column mapping (`key`, e.g. sft.columns) with known keys only: a misspelt key would be
    ignored and the default column read instead, training on other data than the user meant."""
    import difflib

    columns = dict(columns or {})
    for k, v in columns.items():
        if k not in known:
            hint = difflib.get_close_matches(k, known, n=1)
            raise error(f"{key}: unknown mapping key '{k}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
                        + f"; the keys are {', '.join(known)}, each naming a column of your data, "
                        f"e.g. --set {key}.{example}")
        if not isinstance(v, str):
            raise error(f"{key}.{k}: expected a column name, got {v!r}")
    return columns


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


# --- packed token streams -----------------------------------------------------------------------
def pack_documents(tokenizer, docs: list[str]) -> torch.Tensor:
    """Documents -> one 1-D stream `sep d1 sep d2 ...`, sep = the document separator (<|eos|>)."""
    sep = document_eos(tokenizer)
    ids: list[int] = []
    for start in range(0, len(docs), 1000):  # batched fast tokenization, bounded memory
        for doc in tokenizer(docs[start:start + 1000], add_special_tokens=False)["input_ids"]:
            ids.append(sep)
            ids.extend(doc)
    return torch.tensor(ids, dtype=torch.long)


class PackedStream:
    """Training batches as a pure function of (seed, step).

    Sample i = step * batch_size + row; epoch e = i // n_chunks walks a seeded permutation of
    non-overlapping chunks of seq_len + 1 tokens, shifted by a seeded per-epoch offset so that later
    epochs see other token alignments.
    """

    def __init__(self, tokens: torch.Tensor, seq_len: int, batch_size: int, seed: int):
        self.n_chunks = len(tokens) // seq_len - 1
        if self.n_chunks < 1:
            raise ValueError(f"pre-training corpus has {len(tokens)} tokens, fewer than 2 * seq_len "
                             f"({2 * seq_len}); use a bigger corpus or a smaller pretrain.seq_len")
        self.tokens, self.seq_len, self.batch_size, self.seed = tokens, seq_len, batch_size, seed
        self._epoch: tuple[int, torch.Tensor, int] | None = None

    def _order(self, epoch: int) -> tuple[torch.Tensor, int]:
        if self._epoch is None or self._epoch[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n_chunks, generator=g)
            shift = int(torch.randint(self.seq_len, (1,), generator=g))
            self._epoch = (epoch, perm, shift)
        return self._epoch[1], self._epoch[2]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (B, T), for optimizer step `step`."""
        rows = []
        for i in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, pos = divmod(i, self.n_chunks)
            perm, shift = self._order(epoch)
            start = int(perm[pos]) * self.seq_len + shift
            rows.append(self.tokens[start:start + self.seq_len + 1])
        chunk = torch.stack(rows)  # (B, T + 1)
        return chunk[:, :-1], chunk[:, 1:]

    def epochs(self, steps: int) -> float:
        return steps * self.batch_size / self.n_chunks


def eval_chunks(tokens: torch.Tensor, seq_len: int, max_chunks: int) -> torch.Tensor:
    """The first `max_chunks` non-overlapping (T + 1)-token chunks: the same held-out set every time."""
    n = min(max_chunks, (len(tokens) - 1) // seq_len)
    return torch.stack([tokens[i * seq_len:i * seq_len + seq_len + 1] for i in range(n)]) if n else tokens[:0]


def text_chunks(tokenizer, docs: list[str], seq_len: int, max_chunks: int) -> torch.Tensor:
    """Documents -> their first `max_chunks` (seq_len + 1)-token chunks, (N, seq_len + 1)."""
    return eval_chunks(pack_documents(tokenizer, docs), seq_len, max_chunks)


def ptx_chunks(tokenizer, docs: list[str], seq_len: int) -> torch.Tensor:
    """The pre-training text a -ptx loss (PPO-ptx, SFT-ptx) draws its rows from: the first 2,000
    documents, as up to 4,000 chunks."""
    return text_chunks(tokenizer, docs[:2000], seq_len, 4000)


# --- losses and baselines -----------------------------------------------------------------------
def lm_loss(model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats/token); logits upcast so bf16 autocast stays accurate."""
    logits = model(input_ids=inputs, use_cache=False).logits  # (B, T, V)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


@torch.no_grad()
def evaluate_lm_loss(model, chunks: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Mean held-out loss over `chunks` (N, T + 1), weighted by tokens."""
    if len(chunks) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(chunks), batch_size):
        c = chunks[i:i + batch_size].to(device)
        total += lm_loss(model, c[:, :-1], c[:, 1:]).item() * c[:, 1:].numel()
        count += c[:, 1:].numel()
    model.train(was_training)
    return total / count
