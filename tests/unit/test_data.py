"""rlkit.data: loading prompt datasets and the deterministic, resumable prompt stream."""

import json
import logging

import pytest
from transformers import AutoTokenizer

from rlkit.data import PromptItem, PromptSource, load_prompt_dataset
from rlkit.tasks.arithmetic import write_splits
from rlkit.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def tok_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"plain": build_tiny_model(root / "plain"), "chat": build_tiny_model(root / "chat", chat_template=True)}


@pytest.fixture(scope="module")
def plain_tok(tok_dirs):
    return AutoTokenizer.from_pretrained(tok_dirs["plain"])


@pytest.fixture(scope="module")
def chat_tok(tok_dirs):
    return AutoTokenizer.from_pretrained(tok_dirs["chat"])


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("arith")
    write_splits(out, train=23, eval=7, seed=0)
    return out


def test_load_jsonl_folder_split_and_parquet(task_dir, tmp_path):
    train = load_prompt_dataset(task_dir, split="train")
    assert len(train) == 23 and {"prompt", "answer", "difficulty", "data_source"} <= set(train.column_names)
    assert len(load_prompt_dataset(task_dir, split="eval")) == 7
    assert len(load_prompt_dataset(task_dir / "eval.jsonl")) == 7
    train.to_parquet(str(tmp_path / "train.parquet"))
    pq = load_prompt_dataset(str(tmp_path / "train.parquet"), columns=["answer"])
    assert pq.column_names == ["prompt", "answer"] and pq[0] == {"prompt": train[0]["prompt"],
                                                                 "answer": train[0]["answer"]}
    with pytest.raises(FileNotFoundError, match="no file for split 'test'.*train.jsonl"):
        load_prompt_dataset(task_dir, split="test")


def test_missing_file_names_path_and_fix(tmp_path):
    missing = tmp_path / "nope" / "train.jsonl"
    with pytest.raises(FileNotFoundError) as err:
        load_prompt_dataset(str(missing))
    assert str(missing) in str(err.value) and "rlkit make-data" in str(err.value)


def test_missing_column_lists_present(task_dir):
    with pytest.raises(ValueError, match="'question'.*columns present: prompt, answer, difficulty, data_source"):
        load_prompt_dataset(task_dir, prompt_column="question")


def test_items_plain_and_chat(task_dir, plain_tok, chat_tok):
    ds = load_prompt_dataset(task_dir)
    row = ds[4]
    plain = PromptSource(ds, plain_tok).item(4)
    assert isinstance(plain, PromptItem) and plain.index == 4 and plain.prompt == row["prompt"]
    assert plain.prompt_ids == plain_tok(row["prompt"], add_special_tokens=False)["input_ids"]
    assert plain.columns == {"answer": row["answer"], "difficulty": row["difficulty"], "data_source": "arithmetic"}
    chat = PromptSource(ds, chat_tok).item(4)                      # "auto" applies the template
    assert chat.prompt == f"<|im_start|>user\n{row['prompt']}<|im_end|>\n<|im_start|>assistant\n"
    assert chat.prompt_ids[0] == chat_tok.convert_tokens_to_ids("<|im_start|>")
    assert PromptSource(ds, chat_tok, chat_template=False).item(4).prompt == row["prompt"]
    with pytest.raises(ValueError, match="no chat template"):
        PromptSource(ds, plain_tok, chat_template=True)


def test_chat_message_prompts(tmp_path, plain_tok, chat_tok):
    path = tmp_path / "msgs.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"{i}+1="}], "answer": str(i + 1)} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_prompt_dataset(str(path))
    item = PromptSource(ds, chat_tok).item(2)
    assert item.prompt == "<|im_start|>user\n2+1=<|im_end|>\n<|im_start|>assistant\n"
    assert item.columns == {"answer": "3"}
    with pytest.raises(ValueError, match="chat messages, which need a chat template"):
        PromptSource(ds, plain_tok)


def test_stream_is_deterministic_and_covers_each_epoch(task_dir, plain_tok):
    ds = load_prompt_dataset(task_dir)
    src = PromptSource(ds, plain_tok, seed=5)
    n = len(src)
    stream = [p.index for p in src.batch(0, 3 * n)]
    for e in range(3):
        assert sorted(stream[e * n:(e + 1) * n]) == list(range(n))        # every row once per epoch
    assert stream[:n] != stream[n:2 * n]                                   # reshuffled per epoch
    assert [p.index for p in PromptSource(ds, plain_tok, seed=5).batch(n - 2, 5)] == stream[n - 2:n + 3]  # resume
    assert [p.index for p in PromptSource(ds, plain_tok, seed=6).batch(0, n)] != stream[:n]
    assert [p.index for p in PromptSource(ds, plain_tok, shuffle=False).batch(n - 1, 2)] == [n - 1, 0]


def test_max_prompt_tokens_filters(task_dir, plain_tok, caplog):
    ds = load_prompt_dataset(task_dir)
    short = [i for i, p in enumerate(ds["prompt"]) if len(p) <= 4]           # one token per character
    with caplog.at_level(logging.WARNING, logger="rlkit.data"):
        src = PromptSource(ds, plain_tok, max_prompt_tokens=4, shuffle=False)
    assert len(src) == len(short) and [p.index for p in src.batch(0, len(src))] == short
    assert f"dropped {len(ds) - len(short)} of {len(ds)}" in caplog.text
    with pytest.raises(KeyError, match="filtered out"):
        src.item(next(i for i in range(len(ds)) if i not in short))


def test_hub_configuration_is_passed_to_load_dataset_and_refused_for_local_data(monkeypatch, tmp_path):
    import datasets

    from rlkit.data import load_prompt_dataset
    calls = []

    def fake_load(name, config=None, split=None, **kw):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({"prompt": ["1+1="], "answer": ["2"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    load_prompt_dataset("openai/gsm8k", split="test", config="main")
    assert calls == [("openai/gsm8k", "main", "test")]
    local = tmp_path / "p.jsonl"
    local.write_text('{"prompt": "x"}\n')
    with pytest.raises(ValueError, match="configuration 'main' given for the local dataset"):
        load_prompt_dataset(str(local), config="main")


def test_every_gsm8k_recipe_names_its_hub_configuration():
    from pathlib import Path

    import yaml
    recipes = sorted(Path(__file__).resolve().parents[2].glob("recipes/*.yaml"))
    gsm8k = [yaml.safe_load(p.read_text())["data"] for p in recipes if "openai/gsm8k" in p.read_text()]
    assert gsm8k and all(d["train"] != "openai/gsm8k" or d.get("train_config") == "main" for d in gsm8k)


def test_prompt_template_and_system_prompt_build_the_prompt_before_the_chat_template():
    import datasets

    from rlkit.data import format_prompts
    raw = datasets.Dataset.from_dict({"question": ["1+1?", "2+3?"], "answer": ["2", "5"]})   # hub GSM8K's shape
    out = format_prompts(raw, "prompt", "{question}\nPut the final answer after ####.")
    assert out["prompt"] == ["1+1?\nPut the final answer after ####.", "2+3?\nPut the final answer after ####."]
    assert out["answer"] == ["2", "5"]                                          # other columns kept
    chat = format_prompts(raw, "prompt", "{question}", system_prompt="Be brief.")
    assert chat["prompt"][0] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]
    convo = datasets.Dataset.from_dict({"prompt": [[{"role": "user", "content": "hi"}]]})
    assert format_prompts(convo, "prompt", system_prompt="S")["prompt"][0][0] == {"role": "system", "content": "S"}
    assert format_prompts(raw, "prompt") is raw                                 # nothing asked: unchanged
    with pytest.raises(ValueError, match=r"names column\(s\) \['problem'\] that the dataset lacks"):
        format_prompts(raw, "prompt", "{problem}")
