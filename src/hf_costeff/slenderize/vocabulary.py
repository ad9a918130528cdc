"""Task-vocabulary trimming: the word embedding and the WordPiece tokenizer (fast ``tokenizer.json`` and slow
``vocab.txt``) cut down together to the tokens a task's texts use.

The word embedding is half of MiniLM-L6's parameters and a fifth of BERT-base's, yet one GLUE task uses a third of
the 30,522 WordPiece ids. ``trim_vocabulary`` keeps

* every special token (and every token id the model configuration names, such as ``pad_token_id``),
* every id that occurs at least ``min_count`` times when the tokenizer encodes the given texts,
* ``keep_tokens``, and
* by default every single-character piece, both word-initial (``"q"``) and continuation (``"##q"``),

renumbers the kept tokens ``0..n-1`` in their original order, selects those rows of the word embedding (the
``(V, r)`` table of a factorized embedding as well) and rewrites the tokenizer in the new id order.

Guarantees. WordPiece splits a word greedily into the longest pieces it knows. If every piece the original tokenizer
produces for a word is kept, no longer piece can appear in the smaller vocabulary, so the trimmed tokenizer splits the
word into the same pieces, now numbered by the new ids: on a text whose pieces are all kept (with ``min_count=1``,
every text of the corpus) the trimmed model computes the same logits. A word with a dropped piece is split into other
kept pieces, down to single characters; it becomes ``[UNK]`` only where one of its characters has no kept piece (with
``keep_characters=True``, only where the original tokenizer gave ``[UNK]`` too, or for words longer than
``max_input_chars_per_word``).

```python
from hf_costeff.slenderize import trim_vocabulary, write_vocab_file

model, tokenizer = trim_vocabulary(model, tokenizer, train_sentences, corpus="glue/sst2 train")
model.save_pretrained("out"), tokenizer.save_pretrained("out"), write_vocab_file(tokenizer, "out")
```
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from .config import model_configs  # every distinct config object the modules hold

#: Configuration attributes holding token ids; each is kept and renumbered.
TOKEN_ID_FIELDS = (
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "sep_token_id",
    "cls_token_id",
    "unk_token_id",
    "mask_token_id",
    "decoder_start_token_id",
)
#: Configuration attribute in which ``trim_vocabulary`` records what it did (read by the model card).
TRIMMING_FIELD = "vocabulary_trimming"
VOCAB_FILE = "vocab.txt"
_BATCH = 2048  # texts per call of the (Rust, multi-threaded) batch encoder


def _wordpiece(tokenizer: Any) -> dict:
    """The tokenizer's ``tokenizers`` serialization, after checking that it is a fast WordPiece tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not getattr(tokenizer, "is_fast", False) or backend is None:
        raise TypeError(
            f"tokenizer must be a fast (tokenizers-backed) tokenizer, got {type(tokenizer).__name__}; load it with "
            "AutoTokenizer.from_pretrained(...)"
        )
    state = json.loads(backend.to_str())
    kind = state["model"].get("type")
    if kind != "WordPiece":
        raise ValueError(f"tokenizer must use a WordPiece model (the BERT family), got a {kind} tokenizer")
    return state


def _token_texts(texts: Iterable[str], name: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{name} must be a sequence of strings, not one string")
    texts = list(texts)
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"{name} must hold strings only, got a {type(bad).__name__}: {bad!r}")
    return texts


def count_token_ids(tokenizer: Any, texts: Sequence[str], num_ids: int, show_progress: bool = True) -> np.ndarray:
    """How often each id ``0..num_ids-1`` occurs when ``tokenizer`` encodes ``texts`` (no special tokens added, no
    truncation)."""
    counts = np.zeros(num_ids, dtype=np.int64)
    steps = range(0, len(texts), _BATCH)
    for start in tqdm(steps, desc="counting tokens", disable=not show_progress or len(steps) < 2, leave=False):
        encoded = tokenizer(
            list(texts[start : start + _BATCH]),
            add_special_tokens=False,
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        ids = np.fromiter((i for row in encoded for i in row), dtype=np.int64)
        if ids.size:
            counts += np.bincount(ids, minlength=num_ids)[:num_ids]
    return counts


def _tokens(tokenizer: Any, texts: list[str]) -> list[list[str]]:
    encoded = tokenizer(texts, add_special_tokens=False, truncation=False, return_attention_mask=False)["input_ids"]
    return [tokenizer.convert_ids_to_tokens(row) for row in encoded]


def unknown_token_rate(tokenizer: Any, texts: Iterable[str]) -> float:
    """Share of the tokens of ``texts`` (special tokens not counted) that ``tokenizer`` turns into its unknown token."""
    texts = _token_texts(texts, "texts")
    if tokenizer.unk_token is None:
        raise ValueError("tokenizer has no unknown token (unk_token is None)")
    rows = _tokens(tokenizer, texts)
    total = sum(len(row) for row in rows)
    return sum(row.count(tokenizer.unk_token) for row in rows) / total if total else 0.0


def compare_tokenizations(before: Any, after: Any, texts: Iterable[str]) -> dict[str, float | int]:
    """How ``after`` (a trimmed tokenizer) encodes held-out ``texts`` compared with ``before`` (the original).

    Returns the number of texts, their tokens under each tokenizer (special tokens not counted), the share of tokens
    that are ``[UNK]`` under each, and the share of texts split into different pieces (texts whose pieces were all
    kept are split identically).
    """
    texts = _token_texts(texts, "texts")
    old, new = _tokens(before, texts), _tokens(after, texts)
    old_total, new_total = sum(map(len, old)), sum(map(len, new))
    return {
        "texts": len(texts),
        "tokens_before": old_total,
        "tokens_after": new_total,
        "unknown_rate_before": sum(r.count(before.unk_token) for r in old) / old_total if old_total else 0.0,
        "unknown_rate_after": sum(r.count(after.unk_token) for r in new) / new_total if new_total else 0.0,
        "texts_resplit": sum(a != b for a, b in zip(old, new, strict=True)) / len(texts) if texts else 0.0,
    }


def _token_ids(value: Any) -> list[int]:
    """The token ids a configuration field holds: none, one id, or a list of ids (``eos_token_id=[1, 2]``)."""
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]


def _single_characters(vocab: dict[str, int], prefix: str) -> set[int]:
    """Ids of the one-character pieces, word-initial (``"q"``) and continuation (``"##q"``)."""
    return {
        i
        for token, i in vocab.items()
        if len(token) == 1 or (prefix and token.startswith(prefix) and len(token) == len(prefix) + 1)
    }


def _remap_processor(processor: dict | None, new_id: dict[int, int]) -> None:
    """Renumber the special-token ids a ``tokenizers`` post-processor stores (in place)."""
    if not processor:
        return
    kind = processor.get("type")
    if kind == "Sequence":
        for child in processor.get("processors", []):
            _remap_processor(child, new_id)
    elif kind == "TemplateProcessing":
        for special in processor.get("special_tokens", {}).values():
            special["ids"] = [new_id[i] for i in special["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            token, i = processor[key]
            processor[key] = [token, new_id[i]]


def _trimmed_state(state: dict, kept: list[int], new_id: dict[int, int]) -> dict:
    """The ``tokenizer.json`` content holding only the ``kept`` ids, renumbered by ``new_id`` (``state`` is reused)."""
    state["model"]["vocab"] = {t: new_id[i] for t, i in state["model"]["vocab"].items() if i in new_id}
    for added in state.get("added_tokens", []):
        added["id"] = new_id[added["id"]]
    _remap_processor(state.get("post_processor"), new_id)
    if state.get("padding"):
        state["padding"]["pad_id"] = new_id[state["padding"]["pad_id"]]
    return state


def _reload_tokenizer(tokenizer: Any, state: dict, new_id: dict[int, int]) -> Any:
    """``tokenizer`` with the trimmed ``tokenizer.json``: saved, rewritten and loaded back the way users load it."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="trim-vocab-") as tmp:
        tokenizer.save_pretrained(tmp)
        Path(tmp, "tokenizer.json").write_text(json.dumps(state, ensure_ascii=False), encoding="utf-8")
        config_file = Path(tmp, "tokenizer_config.json")
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if "added_tokens_decoder" in config:  # written by older transformers: keyed by id
            config["added_tokens_decoder"] = {
                str(new_id[int(i)]): token for i, token in config["added_tokens_decoder"].items()
            }
            config_file.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
        Path(tmp, VOCAB_FILE).unlink(missing_ok=True)  # the tokenizer.json alone defines the new tokenizer
        trimmed = AutoTokenizer.from_pretrained(tmp)
    trimmed.name_or_path = tokenizer.name_or_path
    return trimmed


def vocab_file_lines(tokenizer: Any) -> list[str]:
    """The tokens of ``tokenizer``'s WordPiece vocabulary ordered by id: the lines of a slow tokenizer's
    ``vocab.txt``. Raises ``ValueError`` if the ids are not ``0..n-1`` (such a vocabulary has no ``vocab.txt``)."""
    vocab = _wordpiece(tokenizer)["model"]["vocab"]
    by_id = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in by_id] != list(range(len(by_id))):
        raise ValueError("the tokenizer's WordPiece ids are not 0..n-1: it cannot be written as a vocab.txt")
    if any("\n" in t for t in by_id):
        raise ValueError("a WordPiece token holds a newline: it cannot be written as a vocab.txt")
    return by_id


def write_vocab_file(tokenizer: Any, folder: str | os.PathLike) -> Path:
    """Write ``folder/vocab.txt`` (one token per line, line ``i`` = id ``i``) for the slow ``BertTokenizer``.

    transformers 5 saves a fast tokenizer as ``tokenizer.json`` only; this adds the slow tokenizer's file, in the same
    id order, and replaces a stale ``vocab.txt`` left in ``folder`` from the untrimmed tokenizer. Returns its path.
    """
    target = Path(folder) / VOCAB_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(f"{t}\n" for t in vocab_file_lines(tokenizer)), encoding="utf-8")
    return target


def trim_vocabulary(
    model: nn.Module,
    tokenizer: Any,
    texts: Iterable[str],
    min_count: int = 1,
    keep_tokens: Iterable[str] | None = None,
    keep_characters: bool = True,
    corpus: str | None = None,
    show_progress: bool = True,
) -> tuple[nn.Module, Any]:
    """Trim ``model``'s word embedding and ``tokenizer``'s WordPiece vocabulary to the tokens of ``texts``.

    Args:
        model: a ``CostEffForSequenceClassification`` / ``CostEffModel`` (factorized embedding or not, before or after
            slenderization) or a BERT model (``BertForSequenceClassification``). Changed in place and returned.
        tokenizer: its fast WordPiece tokenizer (``AutoTokenizer``). Left unchanged; a new tokenizer is returned.
        texts: the corpus, e.g. a task's training sentences (for sentence pairs, both columns).
        min_count: a token is kept if it occurs at least this many times in ``texts``.
        keep_tokens: more tokens (strings of the vocabulary) to keep whatever their count.
        keep_characters: keep every single-character piece (``"q"`` and ``"##q"``), so that a word the corpus never
            had still splits into pieces instead of ``[UNK]`` wherever the original vocabulary could split it.
        corpus: a name for ``texts`` (e.g. ``"glue/sst2 train"``), recorded in the configuration for the model card.

    Returns:
        ``(model, tokenizer)``: the model with ``vocab_size`` rows and ``vocab_size`` / special-token ids updated in
        its configuration (with a ``vocabulary_trimming`` record), and a tokenizer whose ids index those rows.
        Save the slow tokenizer's ``vocab.txt`` beside its ``tokenizer.json`` with :func:`write_vocab_file`.
    """
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be an integer >= 1, got {min_count!r}")
    texts = _token_texts(texts, "texts")
    if not texts:
        raise ValueError("texts is empty: there is nothing to build the vocabulary from")
    state = _wordpiece(tokenizer)
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"model must be a transformers PreTrainedModel, got {type(model).__name__}")
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, nn.Embedding):
        raise TypeError(f"model's input embedding must be an nn.Embedding, got {type(embedding).__name__}")
    if model.get_output_embeddings() is not None:
        raise ValueError(
            f"{type(model).__name__} has an output (language-modelling) embedding: trim_vocabulary handles encoders "
            "with classification heads only"
        )
    num_rows = embedding.num_embeddings
    if len(tokenizer) > num_rows:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but the model's word embedding only {num_rows} rows: "
            "they do not belong together"
        )

    vocab = tokenizer.get_vocab()
    kept = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    for config in model_configs(model):
        for field in TOKEN_ID_FIELDS:
            for value in _token_ids(getattr(config, field, None)):
                if not 0 <= value < len(tokenizer):
                    raise ValueError(
                        f"config.{field} holds {value}, not a token id of the tokenizer ({len(tokenizer)} ids)"
                    )
                kept.add(value)
    if keep_tokens is not None:
        keep_tokens = _token_texts(keep_tokens, "keep_tokens")
        unknown = [t for t in keep_tokens if t not in vocab]
        if unknown:
            raise ValueError(f"keep_tokens holds tokens the tokenizer does not have: {unknown[:10]}")
        kept |= {vocab[t] for t in keep_tokens}
    if keep_characters:
        kept |= _single_characters(state["model"]["vocab"], state["model"].get("continuing_subword_prefix", ""))
    counts = count_token_ids(tokenizer, texts, len(tokenizer), show_progress=show_progress)
    kept |= set(np.flatnonzero(counts >= min_count).tolist())
    kept_ids = sorted(kept)
    new_id = {old: new for new, old in enumerate(kept_ids)}

    new_tokenizer = _reload_tokenizer(tokenizer, _trimmed_state(state, kept_ids, new_id), new_id)

    pad = embedding.padding_idx
    with torch.no_grad():
        index = torch.tensor(kept_ids, device=embedding.weight.device)
        rows = nn.Embedding(
            len(kept_ids),
            embedding.embedding_dim,
            padding_idx=new_id.get(pad) if pad is not None else None,
            device=embedding.weight.device,
            dtype=embedding.weight.dtype,
        )
        rows.weight.copy_(embedding.weight.index_select(0, index))
    rows.weight.requires_grad_(embedding.weight.requires_grad)
    model.set_input_embeddings(rows)

    previous = getattr(model.config, TRIMMING_FIELD, None) or {}  # trimming a trimmed model: keep the first size
    record = {
        "original_vocab_size": previous.get("original_vocab_size", num_rows),
        "vocab_size": len(kept_ids),
        "corpus": corpus,
        "num_texts": len(texts),
        "min_count": min_count,
        "keep_characters": keep_characters,
    }
    for config in model_configs(model):
        config.vocab_size = len(kept_ids)
        for field in TOKEN_ID_FIELDS:
            value = getattr(config, field, None)
            if _token_ids(value):
                setattr(config, field, [new_id[v] for v in value] if isinstance(value, list) else new_id[value])
        setattr(config, TRIMMING_FIELD, record)
    return model, new_tokenizer


__all__ = [
    "TOKEN_ID_FIELDS",
    "TRIMMING_FIELD",
    "compare_tokenizations",
    "count_token_ids",
    "trim_vocabulary",
    "unknown_token_rate",
    "vocab_file_lines",
    "write_vocab_file",
]
