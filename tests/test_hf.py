"""attend.hf: Hugging Face models run through attend (attn_implementation="attend") equal
"eager", return weights, and generate the same tokens with a key/value cache."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (extra 'hf')")
import attend.hf  # noqa: E402  (registers "attend")


def _both(model_cls, config, tmp_path, dtype=torch.float64):
    torch.manual_seed(0)
    model_cls(config).save_pretrained(tmp_path)
    eager = model_cls.from_pretrained(tmp_path, attn_implementation="eager").to(dtype).eval()
    ours = model_cls.from_pretrained(tmp_path, attn_implementation="attend").to(dtype).eval()
    return eager, ours


def test_bert_equals_eager_and_returns_weights(tmp_path):
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=32)
    eager, ours = _both(transformers.BertModel, cfg, tmp_path)
    assert ours.config._attn_implementation == "attend"
    ids = torch.randint(5, 50, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    with torch.no_grad():
        e = eager(input_ids=ids, attention_mask=mask, output_attentions=True)
        a = ours(input_ids=ids, attention_mask=mask, output_attentions=True)
    real = mask.bool()
    torch.testing.assert_close(a.last_hidden_state[real], e.last_hidden_state[real], rtol=1e-10, atol=1e-10)
    for we, wa in zip(e.attentions, a.attentions):  # (B, H, L, S); compare the real query rows
        torch.testing.assert_close(wa.transpose(1, 2)[real], we.transpose(1, 2)[real], rtol=1e-10, atol=1e-10)


def test_attention_goes_through_attend(tmp_path, monkeypatch):
    calls = []
    real = attend.hf.attention

    def spy(*a, **kw):
        calls.append(kw.get("causal"))
        return real(*a, **kw)

    monkeypatch.setattr(attend.hf, "attention", spy)
    cfg = transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=4, n_positions=32)
    _, ours = _both(transformers.GPT2LMHeadModel, cfg, tmp_path)
    with torch.no_grad():
        ours(input_ids=torch.randint(0, 40, (1, 6)))
    assert calls == [True, True]  # one causal call per layer


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_causal_models_equal_eager_with_padding_and_generation(family, tmp_path):
    if family == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=4, n_positions=64)
        cls, dtype, tol = transformers.GPT2LMHeadModel, torch.float64, 1e-9
    else:  # grouped-query attention and RoPE. float32: Llama's eager path gives NaN for
        # left-padded rows in float64 (its own masking), so the comparison is in float32.
        cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        cls, dtype, tol = transformers.LlamaForCausalLM, torch.float32, 2e-5
    eager, ours = _both(cls, cfg, tmp_path, dtype)
    ids = torch.randint(1, 40, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0  # left padding, as for generation
    with torch.no_grad():
        e = eager(input_ids=ids, attention_mask=mask, output_attentions=True)
        a = ours(input_ids=ids, attention_mask=mask, output_attentions=True)
    real = mask.bool()
    torch.testing.assert_close(a.logits[real], e.logits[real], rtol=tol, atol=tol)
    torch.testing.assert_close(a.attentions[-1][0], e.attentions[-1][0], rtol=tol, atol=tol)
    gen = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ge = eager.generate(ids, attention_mask=mask, **gen)
        ga = ours.generate(ids, attention_mask=mask, **gen)
    assert torch.equal(ga, ge)


def test_register_rejects_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        attend.hf.register("warp-drive")
    attend.hf.register()  # back to "auto" for the other tests
