"""Prompt datasets via ``datasets``: local json/jsonl/parquet/csv files or folders, or hub names.

``load_prompt_dataset(source)`` returns a ``datasets.Dataset`` holding a prompt column (a string, or a list
of chat messages ``[{"role", "content"}]``) plus any other columns (answer, data_source ...), which reach the
reward functions unchanged.

``PromptSource`` turns it into a deterministic, infinite stream of ``PromptItem`` s: epoch ``e`` is a
permutation of the rows seeded by ``(seed, e)`` (identity order with ``shuffle=False``), and the stream is
epoch 0, epoch 1, ... concatenated. ``batch(start, size)`` returns stream positions ``start .. start+size-1``,
so the whole data position of a run is one integer: checkpoint it and pass it back to ``batch`` to resume
the exact same prompt order, with no iterator state to save.
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("rlkit.data")

FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
SPLIT_NAMES = ("train", "eval", "test", "validation", "valid", "dev")
MAKE_DATA_HINT = "generate it with `rlkit make-data arithmetic DIR`, or fix the path"


@dataclass
class PromptItem:
    """One prompt of the stream."""

    index: int                     # row of the dataset (stable across epochs, shuffles and resumes)
    prompt: str                    # the text given to the model, chat template applied
    prompt_ids: list[int]          # its token ids (no special tokens beyond the template's)
    columns: dict[str, Any] = field(default_factory=dict)  # every other column (answer, data_source ...)
    raw_prompt: Any = None         # the prompt column's value as stored (a string or chat messages), for environments


def stack_columns(items: list[PromptItem]) -> dict[str, list[Any]]:
    """Per-item ``columns`` dicts -> one list per column (the form reward functions receive)."""
    return {k: [item.columns[k] for item in items] for k in items[0].columns} if items else {}


def is_local_source(source: str) -> bool:
    """A path (existing, with a data suffix, absolute/relative-looking, or under an existing folder)?

    Anything else -- ``name`` or ``owner/name`` -- is taken as a hub dataset name.
    """
    path = Path(source).expanduser()
    under_folder = "/" in source and Path(Path(source).parts[0]).is_dir()
    return (path.exists() or path.suffix.lower() in FORMATS or source.startswith(("/", ".", "~"))
            or "\\" in source or source.count("/") > 1 or under_folder)


def _split_files(folder: Path, split: str) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(FORMATS)} files in folder '{folder}'; {MAKE_DATA_HINT}")
    named = [p for p in files if p.stem == split or p.stem.startswith((f"{split}-", f"{split}_", f"{split}."))]
    if named:
        return named
    if split == "train" and not any(p.stem.split("-")[0].split("_")[0] in SPLIT_NAMES for p in files):
        return files  # a folder of unnamed shards is the train split
    raise FileNotFoundError(f"no file for split '{split}' in '{folder}' (files: "
                            f"{', '.join(p.name for p in files)}); name it {split}.jsonl or choose another split")


def _load_local(path: Path, split: str):
    import datasets

    if not path.exists():
        raise FileNotFoundError(f"prompt dataset '{path}' does not exist; {MAKE_DATA_HINT}")
    files = _split_files(path, split) if path.is_dir() else [path]
    formats = {FORMATS.get(p.suffix.lower()) for p in files}
    if None in formats or len(formats) != 1:
        raise ValueError(f"cannot read {[str(p) for p in files]}: use one format among "
                         f"{', '.join(FORMATS)} per split")
    return datasets.load_dataset(formats.pop(), data_files=[str(p) for p in files], split="train")


def _load_hub(name: str, split: str, config: str | None = None):
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # noqa: BLE001  (re-raised with what to check)
        which = f"configuration '{config}', " if config else ""
        hint = "" if config else (" A dataset with several configurations (openai/gsm8k: main or socratic) needs "
                                  "one: set data.train_config / data.eval_config.")
        raise RuntimeError(f"could not load dataset '{name}' ({which}split '{split}') from the Hugging Face Hub: "
                           f"{exc}.{hint} If it is meant to be a local path, it does not exist; "
                           f"{MAKE_DATA_HINT}") from exc


def load_prompt_dataset(source: str | Path, *, split: str = "train", prompt_column: str = "prompt",
                        columns: list[str] | None = None, config: str | None = None):
    """Load ``source`` (local file/folder or hub name) as a ``datasets.Dataset`` and check its columns.

    A file is read whole (``split`` ignored). A folder is searched recursively for ``.json/.jsonl/.parquet/
    .csv`` files named after the split (``train.jsonl``, ``train-00000-of-00002.parquet`` ...); a folder whose
    files carry no split name is the ``train`` split. Anything not local-looking (see ``is_local_source``)
    is loaded with ``datasets.load_dataset(source, config, split=split)`` (``config``: the hub dataset's
    configuration, e.g. ``main`` of ``openai/gsm8k``; refused for local data). ``columns``: keep only these besides the
    prompt column (all kept when None).
    """
    source = str(source)
    local = is_local_source(source)
    if local and config is not None:
        raise ValueError(f"dataset configuration '{config}' given for the local dataset '{source}': configurations "
                         "are a hub dataset's subsets; remove data.train_config / data.eval_config")
    ds = _load_local(Path(source).expanduser(), split) if local else _load_hub(source, split, config)
    present = list(ds.column_names)
    wanted = ([prompt_column] if prompt_column else []) + [c for c in (columns or []) if c != prompt_column]
    missing = [c for c in wanted if c not in present]
    if missing:
        raise ValueError(f"dataset '{source}' has no column {', '.join(repr(c) for c in missing)}; columns "
                         f"present: {', '.join(present)}. Set the prompt/column names in the recipe's data "
                         f"section")
    return ds.select_columns(wanted) if columns is not None else ds


def format_prompts(dataset, prompt_column: str, template: str | None = None, system_prompt: str | None = None):
    """The prompt column built before the chat template: ``template`` (a ``str.format`` string over the columns,
    e.g. ``"{question}\nPut the final answer after ####."``) replaces it, and ``system_prompt`` makes every prompt
    chat messages that open with that system message (prepended to conversational prompts that have none)."""
    if template is None and system_prompt is None:
        return dataset
    fields = {f for _, f, _, _ in string.Formatter().parse(template or "") if f}
    missing = sorted(f for f in fields if f.split(".")[0].split("[")[0] not in dataset.column_names)
    if missing:
        raise ValueError(f"data.prompt_template names column(s) {missing} that the dataset lacks (columns: "
                         f"{', '.join(dataset.column_names)}); write {{column}} with a column of the data")
    if template is None and prompt_column not in dataset.column_names:
        raise ValueError(f"dataset has no prompt column '{prompt_column}' (columns: {', '.join(dataset.column_names)});"
                         " set data.prompt_column, or data.prompt_template to build prompts from the columns")

    def build(row: dict) -> dict:
        prompt = template.format(**row) if template is not None else row[prompt_column]
        if system_prompt is not None:
            if isinstance(prompt, str):
                prompt = [{"role": "user", "content": prompt}]
            if not prompt or prompt[0].get("role") != "system":
                prompt = [{"role": "system", "content": system_prompt}] + list(prompt)
        return {prompt_column: prompt}

    return dataset.map(build, remove_columns=[prompt_column] if prompt_column in dataset.column_names else None)


class PromptSource:
    """A dataset + tokenizer as a deterministic, epoch-shuffled, resumable stream of ``PromptItem`` s."""

    def __init__(self, dataset, tokenizer, *, prompt_column: str = "prompt", chat_template: bool | str = "auto",
                 max_prompt_tokens: int | None = None, seed: int = 0, shuffle: bool = True):
        if chat_template not in ("auto", True, False):
            raise ValueError(f"chat_template must be 'auto', true or false, got {chat_template!r}")
        if prompt_column not in dataset.column_names:
            raise ValueError(f"prompt column '{prompt_column}' not in dataset columns "
                             f"{', '.join(dataset.column_names)}")
        self.dataset, self.tokenizer, self.prompt_column = dataset, tokenizer, prompt_column
        self.seed, self.shuffle = seed, shuffle
        self._template = self._use_template(chat_template)
        texts = [self._render(p) for p in dataset[prompt_column]]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        keep = [i for i, t in enumerate(ids) if max_prompt_tokens is None or len(t) <= max_prompt_tokens]
        if len(keep) < len(texts):
            logger.warning("dropped %d of %d prompts longer than max_prompt_tokens=%d", len(texts) - len(keep),
                           len(texts), max_prompt_tokens)
        if not keep:
            raise ValueError(f"no prompts left (dataset rows: {len(texts)}, max_prompt_tokens="
                             f"{max_prompt_tokens}); raise max_prompt_tokens or check the dataset")
        self._rows = np.asarray(keep, dtype=np.int64)   # kept dataset rows, in dataset order
        self._texts = {i: texts[i] for i in keep}
        self._ids = {i: list(ids[i]) for i in keep}
        self._perms: dict[int, np.ndarray] = {}

    def _use_template(self, chat_template: bool | str) -> bool:
        has = bool(getattr(self.tokenizer, "chat_template", None))
        if chat_template is True and not has:
            raise ValueError("chat_template=true but the tokenizer has no chat template; use a tokenizer that "
                             "has one, or set chat_template to auto/false to feed the raw prompt")
        return has if chat_template == "auto" else bool(chat_template)

    def _render(self, prompt: Any) -> str:
        if isinstance(prompt, str):
            if not self._template:
                return prompt
            messages = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, list) and all(isinstance(m, dict) and {"role", "content"} <= m.keys()
                                              for m in prompt):
            if not self._template:
                raise ValueError("the prompt column holds chat messages, which need a chat template, but the "
                                 "tokenizer has none or chat_template=false; use a tokenizer with a template")
            messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
        else:
            raise ValueError(f"prompt {prompt!r:.80} is neither a string nor a list of {{'role', 'content'}} "
                             f"messages")
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def __len__(self) -> int:
        return len(self._rows)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self._rows)) if self.shuffle \
                else np.arange(len(self._rows))
            self._perms[epoch] = self._rows[order]
        return self._perms[epoch]

    def item(self, index: int) -> PromptItem:
        """The prompt of dataset row ``index``."""
        if index not in self._texts:
            raise KeyError(f"dataset row {index} is not in this source (out of range or filtered out by "
                           f"max_prompt_tokens; {len(self)} rows kept)")
        row = self.dataset[int(index)]
        columns = {k: v for k, v in row.items() if k != self.prompt_column}
        return PromptItem(index=int(index), prompt=self._texts[index], prompt_ids=list(self._ids[index]),
                          columns=columns, raw_prompt=row[self.prompt_column])

    def batch(self, start: int, size: int) -> list[PromptItem]:
        """Stream positions ``start .. start+size-1`` (epochs concatenated; see the module docstring)."""
        if start < 0 or size < 0:
            raise ValueError(f"batch(start={start}, size={size}): both must be >= 0")
        n = len(self._rows)
        return [self.item(int(self._epoch_order(p // n)[p % n])) for p in range(start, start + size)]
