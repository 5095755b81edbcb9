"""Conversation loaders: real fixtures (OpenAssistant, HH-RLHF, self-instruct), column mappings,
and errors that name the file, the line and the field."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest
from conftest import shared_data

from chatrlhf.lm.conversations import DataError, load_conversations, parse_transcript


def _rank0_path(node: dict) -> list[tuple[str, str]]:
    """Reference walk: the reply ranked 0, or the only (unranked) prompter follow-up."""
    path = []
    while node:
        path.append(("user" if node["role"] == "prompter" else "assistant", node["text"]))
        replies = node.get("replies", [])
        node = next((r for r in replies if r.get("rank") == 0), replies[0] if replies else None)
    while path and path[-1][0] != "assistant":
        path.pop()
    return path


def test_oasst_rank0_paths():
    path = shared_data("openassistant_oasst_sample/en_100_tree.jsonl")
    convs = load_conversations(str(path))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(convs) == len(rows) == 100
    for conv, row in zip(convs, rows):
        assert [(m["role"], m["content"]) for m in conv] == _rank0_path(row["prompt"])
    assert any(len(c) >= 4 for c in convs), "multi-turn trees must give multi-turn conversations"
    assert convs[0][1]["content"].startswith("The first step is to research your options")


def test_hh_rlhf_chosen_side():
    path = shared_data("hh_rlhf/harmless-base/test.jsonl.gz")
    convs = load_conversations(str(path))
    with gzip.open(path, "rt") as f:
        first = json.loads(f.readline())
    assert convs[0] == parse_transcript(first["chosen"])
    assert convs[0][0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    # rows whose final "Assistant:" is empty are skipped, not trained on as empty replies
    assert 2000 < len(convs) < 2312
    for conv in convs:
        assert conv[-1]["role"] == "assistant" and conv[-1]["content"]
        assert not any("\n\nHuman:" in m["content"] for m in conv), "every turn is split out"


def test_self_instruct_seed_tasks():
    path = shared_data("self_instruct/seed_tasks.jsonl")
    convs = load_conversations(str(path))
    assert len(convs) == 175
    row = json.loads(path.read_text().splitlines()[1])  # has a non-empty input
    inst = row["instances"][0]
    assert convs[1] == [{"role": "user", "content": f"{row['instruction']}\n\n{inst['input']}"},
                        {"role": "assistant", "content": inst["output"]}]


def test_parse_transcript_multi_turn():
    conv = parse_transcript("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: see you")
    assert conv == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "bye"}, {"role": "assistant", "content": "see you"}]


def test_column_mapping_csv_and_parquet(tmp_path):
    df = pd.DataFrame({"question": ["2+2?", "capital?"], "answer": ["4", "Selmouth"]})
    df.to_csv(tmp_path / "qa.csv", index=False)
    df.to_parquet(tmp_path / "qa.parquet")
    for name in ("qa.csv", "qa.parquet"):
        convs = load_conversations(str(tmp_path / name), columns={"prompt": "question", "response": "answer"})
        assert convs[1] == [{"role": "user", "content": "capital?"}, {"role": "assistant", "content": "Selmouth"}]


def test_messages_and_sharegpt(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "hello"}]},
            {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}]
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    convs = load_conversations(str(p))
    assert convs[0][0]["role"] == "system" and convs[1] == [{"role": "user", "content": "a"},
                                                             {"role": "assistant", "content": "b"}]


def _write(tmp_path, lines: list[str], name: str = "bad.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


def test_trl_conversational_prompt_completion_and_prompt_only_rows(tmp_path):
    """TRL's conversational formats: prompt and completion as chat messages (SFT), the prompt alone
    (PPO prompts); a completion that does not end with the assistant is refused naming line and field."""
    from chatrlhf.lm.conversations import load_prompts

    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    p = tmp_path / "trl.jsonl"
    p.write_text(json.dumps({"prompt": prompt, "completion": [{"role": "assistant", "content": "4"}]}) + "\n"
                 + json.dumps({"prompt": "Hi", "completion": "Hello!"}) + "\n")
    assert load_conversations(p) == [[*prompt, {"role": "assistant", "content": "4"}],
                                     [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]]
    assert [x["messages"] for x in load_prompts(p)] == [prompt, [{"role": "user", "content": "Hi"}]]
    q = tmp_path / "prompts.jsonl"
    q.write_text(json.dumps({"prompt": prompt}) + "\n" + json.dumps({"prompt": []}) + "\n")
    assert [x["messages"] for x in load_prompts(q)] == [prompt]  # an empty conversation asks nothing
    p.write_text(json.dumps({"prompt": prompt, "completion": [{"role": "user", "content": "4"}]}) + "\n")
    with pytest.raises(DataError, match="trl.jsonl:1: field 'completion' must end with the assistant's reply"):
        load_conversations(p)


def test_malformed_json_line_names_file_and_line(tmp_path):
    good = json.dumps({"prompt": "a", "response": "b"})
    p = _write(tmp_path, [good, good, '{"prompt": "a", "response": '])
    with pytest.raises(DataError, match=rf"{p.name}:3: not valid JSON"):
        load_conversations(str(p))


def test_missing_field_names_field_and_line(tmp_path):
    p = _write(tmp_path, [json.dumps({"prompt": "a", "response": "b"}), json.dumps({"prompt": "a", "answer": "b"})])
    with pytest.raises(DataError, match=rf"{p.name}:2: missing field 'response'"):
        load_conversations(str(p), fmt="prompt_response")


def test_bad_role_names_message_index(tmp_path):
    p = _write(tmp_path, [json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]})])
    with pytest.raises(DataError, match=r":1: messages\[1\].role 'robot'"):
        load_conversations(str(p))


def test_wrong_type_is_an_error(tmp_path):
    p = _write(tmp_path, [json.dumps({"prompt": "a", "response": 3})])
    with pytest.raises(DataError, match=r":1: field 'response' must be a string or a list of messages, got int"):
        load_conversations(str(p))


def test_csv_error_line_counts_the_header(tmp_path):
    (tmp_path / "t.csv").write_text("prompt,response\na,b\nc,d\n")
    with pytest.raises(DataError, match=r"t.csv:2: missing field 'output'"):
        load_conversations(str(tmp_path / "t.csv"), fmt="instruction", columns={"instruction": "prompt"})


def test_empty_dataset_is_an_error(tmp_path):
    with pytest.raises(DataError, match="empty dataset"):
        load_conversations(str(_write(tmp_path, [""], "empty.jsonl")))
    only_prompts = _write(tmp_path, [json.dumps({"messages": [{"role": "user", "content": "hi"}]})], "p.jsonl")
    with pytest.raises(DataError, match="empty dataset"):
        load_conversations(str(only_prompts))


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_conversations(str(tmp_path / "nope.jsonl"))
    p = _write(tmp_path, [json.dumps({"foo": 1})])
    with pytest.raises(DataError, match=r":1: cannot tell the format"):
        load_conversations(str(p))


def test_datasets_folder_and_offline_hub_name(tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps({"instruction": "Say hi.", "output": "Hi!"}) + "\n")
    assert load_conversations(str(folder)) == [[{"role": "user", "content": "Say hi."},
                                                {"role": "assistant", "content": "Hi!"}]]
    with pytest.raises(DataError, match="no-such-org/no-such-set: not a local file, and `datasets` could not load it"):
        load_conversations("no-such-org/no-such-set")
