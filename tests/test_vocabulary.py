"""Task-vocabulary trimming: embedding rows and the fast/slow WordPiece tokenizer trimmed together."""

from __future__ import annotations

import copy
import json
import shutil
import textwrap

import pytest
import torch
from conftest import run_without_hf_costeff
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForSequenceClassification,
    pipeline,
)
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

from hf_costeff import CostEffForSequenceClassification, count_parameters
from hf_costeff.serving import load_costeff, save_pretrained_atomic, write_model_card
from hf_costeff.slenderize import (
    Importance,
    factorize_embeddings,
    prune_model,
    trim_vocabulary,
    unknown_token_rate,
    write_vocab_file,
)

UNSEEN = "zzyzx qwertyuiop"  # words no SST-2 sentence holds


@pytest.fixture(scope="module")
def corpus(sst2_sentences) -> list[str]:
    return list(sst2_sentences[:48])


@pytest.fixture(scope="module")
def costeff(minilm_path):
    torch.manual_seed(0)
    return CostEffForSequenceClassification.from_bert(minilm_path, num_labels=2).eval()


def _slenderized(model):
    """``model`` pruned to uneven widths by random importance and its word embedding factorized to rank 48."""
    torch.manual_seed(1)
    config = model.config
    importance = Importance(
        heads=[torch.rand(h) for h in config.layer_num_heads],
        neurons=[torch.rand(f) for f in config.layer_intermediate_sizes],
    )
    prune_model(model, importance, [12, 6, 3, 0, 6, 12], [1536, 700, 64, 0, 300, 1536])
    factorize_embeddings(model, rank=48)
    return model


def _logits(model, tokenizer, texts, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt"), **kwargs).logits


def _numel(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kind", ["costeff", "costeff-slenderized", "bert"])
def test_logits_tokens_and_parameters_on_kept_texts(kind, tmp_path, costeff, minilm_path, minilm_tokenizer, corpus):
    if kind == "bert":
        model = BertForSequenceClassification.from_pretrained(minilm_path, num_labels=2).eval()
    else:
        model = copy.deepcopy(costeff)
        if kind == "costeff-slenderized":
            _slenderized(model)
    expected = _logits(model, minilm_tokenizer, corpus)
    reference = copy.deepcopy(model)
    before = _numel(model)
    row_width = model.get_input_embeddings().embedding_dim

    trimmed, tokenizer = trim_vocabulary(model, minilm_tokenizer, corpus, corpus="sst2 dev head", show_progress=False)
    assert trimmed is model and tokenizer is not minilm_tokenizer
    n = trimmed.config.vocab_size
    assert n == len(tokenizer) == trimmed.get_input_embeddings().num_embeddings < len(minilm_tokenizer) // 4
    torch.testing.assert_close(_logits(trimmed, tokenizer, corpus), expected, atol=1e-6, rtol=0)
    if kind != "bert":  # an early-exit run takes the same decisions
        kwargs = {"exit_criterion": "entropy", "exit_threshold": 0.6}
        torch.testing.assert_close(
            _logits(trimmed, tokenizer, corpus, **kwargs),
            _logits(reference, minilm_tokenizer, corpus, **kwargs),
            atol=1e-6,
            rtol=0,
        )
    # Every kept text splits into the same tokens, now under the new ids.
    for text in corpus:
        old, new = minilm_tokenizer(text)["input_ids"], tokenizer(text)["input_ids"]
        assert tokenizer.convert_ids_to_tokens(new) == minilm_tokenizer.convert_ids_to_tokens(old)
    # The parameter count drops by exactly the removed rows (of the factorized table: rank-wide rows).
    assert _numel(trimmed) == before - (len(minilm_tokenizer) - n) * row_width
    if kind != "bert":
        assert count_parameters(trimmed.config)["total"] == _numel(trimmed)
    assert trimmed.config.pad_token_id == tokenizer.pad_token_id
    assert trimmed.get_input_embeddings().padding_idx == tokenizer.pad_token_id
    assert trimmed.config.vocabulary_trimming["corpus"] == "sst2 dev head"
    assert trimmed.config.vocabulary_trimming["original_vocab_size"] == len(minilm_tokenizer)
    if kind == "bert":  # the teacher baseline round-trips as a plain transformers model
        trimmed.save_pretrained(tmp_path), tokenizer.save_pretrained(tmp_path)
        reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
        assert type(reloaded) is BertForSequenceClassification and reloaded.config.vocab_size == n
        reloaded_logits = _logits(reloaded, AutoTokenizer.from_pretrained(tmp_path), corpus)
        torch.testing.assert_close(reloaded_logits, expected, atol=1e-6, rtol=0)


def test_special_tokens_padding_truncation_and_pairs_behave_as_before(costeff, minilm_tokenizer, corpus):
    _, tokenizer = trim_vocabulary(copy.deepcopy(costeff), minilm_tokenizer, corpus, show_progress=False)
    for name in ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"):
        assert getattr(tokenizer, name) == getattr(minilm_tokenizer, name)
        assert tokenizer.convert_ids_to_tokens(getattr(tokenizer, name + "_id")) == getattr(tokenizer, name)
    assert tokenizer.all_special_tokens == minilm_tokenizer.all_special_tokens
    for kwargs in ({"padding": "max_length", "max_length": 24, "truncation": True}, {"padding": "longest"}):
        for args in ((corpus[:8],), (corpus[:8], corpus[8:16])):
            old, new = minilm_tokenizer(*args, **kwargs), tokenizer(*args, **kwargs)
            assert new["attention_mask"] == old["attention_mask"]
            assert new["token_type_ids"] == old["token_type_ids"]
            for o, n in zip(old["input_ids"], new["input_ids"], strict=True):
                assert tokenizer.convert_ids_to_tokens(n) == minilm_tokenizer.convert_ids_to_tokens(o)
            assert tokenizer.pad(new)["input_ids"] == new["input_ids"]
    text = corpus[3]
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == minilm_tokenizer.decode(
        minilm_tokenizer(text)["input_ids"], skip_special_tokens=True
    )


def test_unseen_word_splits_into_kept_pieces_not_unk(costeff, minilm_tokenizer, corpus):
    assert not any(word in text for text in corpus for word in UNSEEN.split())
    _, tokenizer = trim_vocabulary(copy.deepcopy(costeff), minilm_tokenizer, corpus, show_progress=False)
    pieces = tokenizer.tokenize(UNSEEN)
    assert tokenizer.unk_token not in pieces and len(pieces) >= len(minilm_tokenizer.tokenize(UNSEEN))
    assert tokenizer.convert_tokens_to_string(pieces) == UNSEEN
    assert unknown_token_rate(tokenizer, [UNSEEN, *corpus]) == 0.0

    _, bare = trim_vocabulary(
        copy.deepcopy(costeff), minilm_tokenizer, corpus, keep_characters=False, show_progress=False
    )
    assert bare.tokenize(UNSEEN) == [bare.unk_token, bare.unk_token]
    assert unknown_token_rate(bare, [UNSEEN]) == 1.0
    assert len(bare) < len(tokenizer)


def test_min_count_and_keep_tokens(costeff, minilm_tokenizer, corpus):
    _, once = trim_vocabulary(copy.deepcopy(costeff), minilm_tokenizer, corpus, show_progress=False)
    _, twice = trim_vocabulary(
        copy.deepcopy(costeff), minilm_tokenizer, corpus, min_count=2, keep_tokens=["zebra"], show_progress=False
    )
    assert len(twice) < len(once) and "zebra" in twice.get_vocab() and "zebra" not in once.get_vocab()
    # Rare words re-split into kept pieces, so every corpus text still encodes without [UNK].
    assert unknown_token_rate(twice, corpus) == 0.0


def test_bad_arguments(costeff, minilm_tokenizer, corpus, minilm_path):
    model = copy.deepcopy(costeff)
    with pytest.raises(ValueError, match="min_count"):
        trim_vocabulary(model, minilm_tokenizer, corpus, min_count=0)
    with pytest.raises(TypeError, match="texts must be a sequence of strings"):
        trim_vocabulary(model, minilm_tokenizer, "one sentence")
    with pytest.raises(TypeError, match="texts must hold strings"):
        trim_vocabulary(model, minilm_tokenizer, ["ok", 3])
    with pytest.raises(ValueError, match="texts is empty"):
        trim_vocabulary(model, minilm_tokenizer, [])
    with pytest.raises(ValueError, match="keep_tokens"):
        trim_vocabulary(model, minilm_tokenizer, corpus, keep_tokens=["not-a-wordpiece-token"])
    with pytest.raises(TypeError, match="fast"):
        trim_vocabulary(model, BertTokenizerLegacy.from_pretrained(minilm_path), corpus)
    with pytest.raises(TypeError, match="PreTrainedModel"):
        trim_vocabulary(torch.nn.Linear(2, 2), minilm_tokenizer, corpus)
    assert model.config.vocab_size == len(minilm_tokenizer)  # nothing was changed by the refused calls


def test_saved_folder_round_trips_fast_slow_auto_pipeline_and_card(
    tmp_path, costeff, minilm_path, minilm_tokenizer, corpus
):
    model = _slenderized(copy.deepcopy(costeff))
    expected = _logits(model, minilm_tokenizer, corpus)
    trimmed, tokenizer = trim_vocabulary(model, minilm_tokenizer, corpus, corpus="glue/sst2 dev", show_progress=False)
    folder = tmp_path / "trimmed"
    save_pretrained_atomic(trimmed, folder, tokenizer=tokenizer)
    write_vocab_file(tokenizer, folder)
    assert len((folder / "vocab.txt").read_text(encoding="utf-8").splitlines()) == trimmed.config.vocab_size
    state = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    assert len(state["model"]["vocab"]) == trimmed.config.vocab_size
    assert {t["content"]: t["id"] for t in state["added_tokens"]} == {
        t: tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens
    }

    fast = AutoTokenizer.from_pretrained(folder, use_fast=True)
    slow_flag = AutoTokenizer.from_pretrained(folder, use_fast=False)
    legacy = BertTokenizerLegacy.from_pretrained(folder)  # the pure-Python tokenizer: reads vocab.txt only
    vocab_only = tmp_path / "vocab_only"  # a folder with vocab.txt and no tokenizer.json: built from vocab.txt
    vocab_only.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(folder / name, vocab_only / name)
    from_vocab = AutoTokenizer.from_pretrained(vocab_only)
    for text in [*corpus, UNSEEN]:
        ids = fast(text)["input_ids"]
        assert slow_flag(text)["input_ids"] == ids == legacy(text)["input_ids"] == from_vocab(text)["input_ids"]
    pair, legacy_pair = fast(corpus[0], corpus[1]), legacy(corpus[0], corpus[1], return_token_type_ids=True)
    assert legacy_pair["input_ids"] == pair["input_ids"] and legacy_pair["token_type_ids"] == pair["token_type_ids"]

    reloaded = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert type(reloaded) is CostEffForSequenceClassification
    torch.testing.assert_close(_logits(reloaded, fast, corpus), expected, atol=1e-6, rtol=0)
    strict = load_costeff(folder)
    assert strict.config.vocab_size == trimmed.config.vocab_size
    assert strict.config.vocabulary_trimming == trimmed.config.vocabulary_trimming
    scores = [r["score"] for r in pipeline("text-classification", model=str(folder))(corpus[:4])]
    torch.testing.assert_close(torch.tensor(scores), expected[:4].softmax(-1).max(-1).values, atol=1e-5, rtol=0)

    card = write_model_card(reloaded, folder, teacher_config=AutoConfig.from_pretrained(minilm_path))
    text = card.read_text(encoding="utf-8")
    assert f"| vocabulary (tokens) | {trimmed.config.vocab_size:,} | 30,522 |" in text
    assert f"from 30,522 to {trimmed.config.vocab_size:,} tokens on glue/sst2 dev ({len(corpus)} texts)" in text


def test_trimmed_model_loads_from_the_hub_cache_with_remote_code_only(tmp_path, costeff, minilm_tokenizer, corpus):
    repo_id, sha = "org/costeff-trimmed", "0123456789abcdef0123456789abcdef01234567"
    trimmed, tokenizer = trim_vocabulary(copy.deepcopy(costeff), minilm_tokenizer, corpus, show_progress=False)
    expected = _logits(trimmed, tokenizer, corpus[:6])
    repo = tmp_path / "hf_home" / "hub" / f"models--{repo_id.replace('/', '--')}"
    save_pretrained_atomic(trimmed, repo / "snapshots" / sha, tokenizer=tokenizer)
    write_vocab_file(tokenizer, repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    script = textwrap.dedent(f"""
        import json, sys, torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, pipeline
        model = AutoModelForSequenceClassification.from_pretrained({repo_id!r}, trust_remote_code=True).eval()
        tok = AutoTokenizer.from_pretrained({repo_id!r})
        with torch.no_grad():
            logits = model(**tok({corpus[:6]!r}, padding=True, return_tensors="pt")).logits
        clf = pipeline("text-classification", model={repo_id!r}, trust_remote_code=True)
        scores = [r["score"] for r in clf({corpus[:6]!r}, batch_size=3)]
        assert not any(name.split(".")[0] == "hf_costeff" for name in sys.modules), "hf_costeff was imported"
        print("RESULT=" + json.dumps({{"module": type(model).__module__, "vocab": model.config.vocab_size,
                                      "logits": logits.tolist(), "scores": scores}}))
    """)
    done = run_without_hf_costeff(script, tmp_path / "hf_home", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT=")[-1])
    assert result["module"].startswith("transformers_modules.") and result["vocab"] == len(tokenizer)
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(result["scores"]), expected.softmax(-1).max(-1).values, atol=1e-5, rtol=0)


def test_cli_trim_vocab_reports_sizes_parameters_and_heldout_unk(tmp_path, costeff, minilm_tokenizer, corpus, glue_dir):
    from hf_costeff.cli import main

    source = tmp_path / "model"
    save_pretrained_atomic(costeff, source, tokenizer=minilm_tokenizer)
    texts, heldout = tmp_path / "texts.txt", tmp_path / "heldout.txt"
    texts.write_text("\n".join(corpus) + "\n", encoding="utf-8")
    heldout.write_text(f"{UNSEEN}\nit is a film\n", encoding="utf-8")

    def run(*argv):
        import contextlib
        import io

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--quiet", "trim-vocab", *map(str, argv)])
        return code, json.loads(out.getvalue()) if code == 0 else err.getvalue()

    code, result = run(source, tmp_path / "out", "--texts", texts, "--heldout", heldout)
    assert code == 0
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert result["vocab_size_before"] == len(minilm_tokenizer) and result["vocab_size_after"] == len(tokenizer)
    width = costeff.config.hidden_size
    assert result["parameters_before"] - result["parameters_after"] == (len(minilm_tokenizer) - len(tokenizer)) * width
    assert result["heldout"]["texts"] == 2 and result["heldout"]["unknown_rate_after"] == 0.0
    assert load_costeff(tmp_path / "out").config.vocabulary_trimming["corpus"] == "texts.txt"
    assert BertTokenizerLegacy.from_pretrained(tmp_path / "out")(UNSEEN)["input_ids"] == tokenizer(UNSEEN)["input_ids"]

    code, bare = run(source, tmp_path / "bare", "--texts", texts, "--heldout", heldout, "--no_keep_characters")
    assert code == 0 and bare["vocab_size_after"] < result["vocab_size_after"]
    # UNSEEN's two words become [UNK]; "it is a film" is kept: 2 of 6 held-out tokens.
    assert bare["heldout"]["unknown_rate_after"] == pytest.approx(2 / 6) and bare["heldout"]["unknown_rate_before"] == 0

    code, glue = run(source, tmp_path / "glue", "--glue_dir", glue_dir, "--task", "sst2", "--max_texts", "500")
    assert code == 0 and glue["corpus"] == "glue/sst2 train (first 500)" and glue["heldout"]["texts"] == 872
    assert 0 < glue["heldout"]["texts_resplit"] < 1

    code, message = run(source, tmp_path / "none")
    assert code == 2 and "--texts FILE or --task" in message
    code, message = run(source, tmp_path / "none", "--texts", tmp_path / "missing.txt")
    assert code == 2 and "--texts: cannot read" in message
    assert not (tmp_path / "none").exists()
