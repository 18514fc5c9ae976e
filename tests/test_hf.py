"""attend.integrations.hf: Hugging Face models run through attend (attn_implementation="attend") equal
"eager" — logits within 1e-5 in float32 — for every family below, with left and right
padding, dynamic and static caches, output_attentions and greedy generation; keywords
attend does not implement are refused by name."""
from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (extra 'hf')")
import attend  # noqa: E402
from attend.integrations import hf  # noqa: E402  (importing it registers "attend")

T = transformers
TOL = 1e-5  # logits, float32
_DEC = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_S2S = dict(vocab_size=64, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, forced_eos_token_id=None)

# family -> (model class, config); decoder-only families use a sliding window shorter than
# the prompts (Mistral, Gemma 2/3, GPT-OSS), so windowed layers really cut something.
DECODERS = {
    "gpt2": lambda: (T.GPT2LMHeadModel, T.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                     pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    "llama": lambda: (T.LlamaForCausalLM, T.LlamaConfig(**_DEC)),
    "mistral": lambda: (T.MistralForCausalLM, T.MistralConfig(**_DEC, sliding_window=5)),
    "qwen2": lambda: (T.Qwen2ForCausalLM, T.Qwen2Config(**_DEC)),
    "gemma": lambda: (T.GemmaForCausalLM, T.GemmaConfig(**_DEC, head_dim=8)),
    "gemma2": lambda: (T.Gemma2ForCausalLM, T.Gemma2Config(**_DEC, head_dim=8, sliding_window=5,
                                                           attn_logit_softcapping=5.0)),
    "gemma3": lambda: (T.Gemma3ForCausalLM, T.Gemma3TextConfig(**_DEC, head_dim=8, sliding_window=5)),
    "gpt_oss": lambda: (T.GptOssForCausalLM, T.GptOssConfig(**_DEC, head_dim=8, sliding_window=5, num_local_experts=2,
                                                            num_experts_per_tok=1)),
    # sinks as an output scale, weights returned without them (GPT-OSS returns them with theirs)
    "granite_swa": lambda: (T.GraniteSWAForCausalLM, T.GraniteSWAConfig(**_DEC, sliding_window=5)),
}
SEQ2SEQ = {
    "bart": lambda: (T.BartForConditionalGeneration, T.BartConfig(**_S2S)),
    "marian": lambda: (T.MarianMTModel, T.MarianConfig(**dict(_S2S, decoder_start_token_id=0))),
    "t5": lambda: (T.T5ForConditionalGeneration, T.T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=2,
                                                            num_decoder_layers=2, num_heads=2, pad_token_id=0,
                                                            eos_token_id=2, decoder_start_token_id=0)),
}


def _pair(make):
    """The same random model twice: "eager" and "attend"."""
    cls, cfg = make()
    torch.manual_seed(0)
    eager = cls(cfg).eval()
    with torch.no_grad():  # sinks start at 0: make them matter
        for name, p in eager.named_parameters():
            if name.endswith("sinks"):
                p.normal_(0, 1.5)
    ours = copy.deepcopy(eager)
    eager.set_attn_implementation("eager")
    ours.set_attn_implementation("attend")
    return eager, ours


def _ids(B=2, n=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 64, (B, n), generator=g)


def _padded(ids, side):
    """An attention mask with the second sequence padded by 3 on the left or the right."""
    mask = torch.ones_like(ids)
    if side == "left":
        mask[1, :3] = 0
    else:
        mask[1, -3:] = 0
    return mask


def _close(a, b, what):
    err = (a - b).abs().max().item()
    assert err <= TOL, f"{what}: max difference {err:.2e} > {TOL}"


@pytest.mark.parametrize("family", sorted(DECODERS))
def test_decoder_families_equal_eager(family):
    eager, ours = _pair(DECODERS[family])
    ids = _ids()
    for side in ("left", "right"):
        mask = _padded(ids, side)
        with torch.no_grad():
            e = eager(input_ids=ids, attention_mask=mask, output_attentions=True)
            a = ours(input_ids=ids, attention_mask=mask, output_attentions=True)
        real = mask.bool()
        _close(a.logits[real], e.logits[real], f"{family} {side} padding logits")
        for we, wa in zip(e.attentions, a.attentions):  # (B, H, L, S); the real query rows
            _close(wa.transpose(1, 2)[real], we.transpose(1, 2)[real], f"{family} {side} padding weights")
    with torch.no_grad():  # no padding at all: transformers passes no mask and is_causal
        _close(ours(input_ids=ids).logits, eager(input_ids=ids).logits, f"{family} unpadded logits")
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    for cache in (None, "static"):
        gen = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, output_logits=True,
                   return_dict_in_generate=True, cache_implementation=cache)
        for m in (mask, None):  # left-padded batch, and one without a mask (static: is_causal over empty slots)
            with torch.no_grad():
                ge = eager.generate(ids, attention_mask=m, **gen)
                ga = ours.generate(ids, attention_mask=m, **gen)
            for step, (le, la) in enumerate(zip(ge.logits, ga.logits)):
                _close(la, le, f"{family} generate ({cache or 'dynamic'} cache, mask {m is not None}) step {step}")
            assert torch.equal(ga.sequences, ge.sequences)


@pytest.mark.parametrize("family", sorted(SEQ2SEQ))
def test_encoder_decoder_families_equal_eager(family):
    eager, ours = _pair(SEQ2SEQ[family])
    ids = _ids()
    dec = _ids(2, 5, seed=2)
    for side in ("left", "right"):
        mask = _padded(ids, side)
        with torch.no_grad():
            e = eager(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, output_attentions=True)
            a = ours(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, output_attentions=True)
        _close(a.logits, e.logits, f"{family} {side} padding logits")
        real = mask.bool()
        for we, wa in zip(e.encoder_attentions, a.encoder_attentions):
            _close(wa.transpose(1, 2)[real], we.transpose(1, 2)[real], f"{family} encoder weights")
        for we, wa in zip(e.decoder_attentions + e.cross_attentions, a.decoder_attentions + a.cross_attentions):
            _close(wa, we, f"{family} decoder/cross weights")
        for cache in (None, "static"):
            gen = dict(max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True,
                       cache_implementation=cache)
            with torch.no_grad():
                ge = eager.generate(input_ids=ids, attention_mask=mask, **gen)
                ga = ours.generate(input_ids=ids, attention_mask=mask, **gen)
            for step, (le, la) in enumerate(zip(ge.logits, ga.logits)):
                _close(la, le, f"{family} {side} generate ({cache or 'dynamic'} cache) step {step}")
            assert torch.equal(ga.sequences, ge.sequences)


def test_whisper_equals_eager():
    cfg = T.WhisperConfig(vocab_size=64, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                          decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=8,
                          max_source_positions=16, max_target_positions=32, decoder_start_token_id=1,
                          pad_token_id=0, eos_token_id=2, bos_token_id=1)
    eager, ours = _pair(lambda: (T.WhisperForConditionalGeneration, cfg))
    feats = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(3))
    dec = _ids(2, 4, seed=4)
    with torch.no_grad():
        e = eager(input_features=feats, decoder_input_ids=dec, output_attentions=True)
        a = ours(input_features=feats, decoder_input_ids=dec, output_attentions=True)
    _close(a.logits, e.logits, "whisper logits")
    for we, wa in zip(e.encoder_attentions + e.decoder_attentions + e.cross_attentions,
                      a.encoder_attentions + a.decoder_attentions + a.cross_attentions):
        _close(wa, we, "whisper weights")
    for side in ("left", "right"):  # padded decoder inputs (the audio features have no padding)
        mask = _padded(dec, side)
        with torch.no_grad():
            e = eager(input_features=feats, decoder_input_ids=dec, decoder_attention_mask=mask)
            a = ours(input_features=feats, decoder_input_ids=dec, decoder_attention_mask=mask)
        _close(a.logits[mask.bool()], e.logits[mask.bool()], f"whisper {side}-padded decoder logits")
    for cache in (None, "static"):
        gen = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True,
                   cache_implementation=cache)
        with torch.no_grad():
            ge = eager.generate(input_features=feats, **gen)
            ga = ours.generate(input_features=feats, **gen)
        for le, la in zip(ge.logits, ga.logits):
            _close(la, le, f"whisper generate ({cache or 'dynamic'} cache)")
        assert torch.equal(ga.sequences, ge.sequences)


def test_bert_equals_eager_and_returns_weights(tmp_path):
    cfg = T.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32)
    torch.manual_seed(0)
    T.BertModel(cfg).save_pretrained(tmp_path)  # through from_pretrained, as a user loads a checkpoint
    eager = T.BertModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ours = T.BertModel.from_pretrained(tmp_path, attn_implementation="attend").eval()
    assert ours.config._attn_implementation == "attend"
    ids = torch.randint(5, 50, (2, 7))
    for side in ("left", "right"):
        mask = torch.ones(2, 7, dtype=torch.long)
        if side == "left":
            mask[1, :2] = 0
        else:
            mask[1, 5:] = 0
        with torch.no_grad():
            e = eager(input_ids=ids, attention_mask=mask, output_attentions=True)
            a = ours(input_ids=ids, attention_mask=mask, output_attentions=True)
        real = mask.bool()
        _close(a.last_hidden_state[real], e.last_hidden_state[real], f"bert {side} hidden")
        for we, wa in zip(e.attentions, a.attentions):  # (B, H, L, S); the real query rows
            _close(wa.transpose(1, 2)[real], we.transpose(1, 2)[real], f"bert {side} weights")


def test_static_cache_prefill_sees_no_empty_slot():
    """The measured bug: with a static cache transformers passes L queries, S > L cache slots,
    no mask and is_causal=True (top-left); attend's bottom-right causal let every query see
    the empty slots. Checked at the call itself: the slots past L get weight exactly 0."""
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    module = torch.nn.Module()
    module.is_causal = True
    out, w = hf.attention_forward(module, q, k, v, None, scaling=0.5, output_attentions=True)
    assert w.shape == (1, 2, 4, 7) and torch.equal(w[..., 4:], torch.zeros(1, 2, 4, 3))
    ref, ref_w = attend.attention(q, k[:, :, :4], v[:, :, :4], causal=True, scale=0.5, return_weights=True)
    torch.testing.assert_close(out, ref.transpose(1, 2), rtol=0, atol=0)
    torch.testing.assert_close(w[..., :4], ref_w, rtol=0, atol=0)


def test_position_bias_gets_its_gradient():
    """T5 trains its relative-position table through position_bias."""
    q, k, v = (torch.randn(2, 2, 5, 8, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[1, ..., 3:] = False
    module = torch.nn.Module()
    module.is_causal = False

    def via_hf(b):
        return hf.attention_forward(module, q, k, v, mask, scaling=1.0, position_bias=b)[0]

    assert torch.autograd.gradcheck(via_hf, (bias,))
    out = via_hf(bias)
    s = q @ k.transpose(-1, -2) + bias
    ref = s.masked_fill(~mask, float("-inf")).softmax(-1) @ v
    torch.testing.assert_close(out, ref.transpose(1, 2))


@pytest.mark.parametrize("name,value", [("head_mask", torch.ones(2)), ("cu_seq_lens_q", torch.tensor([0, 3, 5])),
                                        ("some_future_option", True)])
def test_unimplemented_keywords_are_refused_by_name(name, value):
    q = k = v = torch.randn(1, 2, 3, 4)
    with pytest.raises(TypeError, match=f"does not implement the keyword '{name}'"):
        hf.attention_forward(torch.nn.Module(), q, k, v, None, **{name: value})
    # the same keyword with nothing in it asks for nothing
    hf.attention_forward(torch.nn.Module(), q, k, v, None, **{name: None})


def test_weights_with_sinks_follow_the_family_or_are_refused():
    class Attn(torch.nn.Module):
        def __init__(self, model_type):
            super().__init__()
            self.config = type("Config", (), {"model_type": model_type})()

    q = k = v = torch.randn(1, 2, 3, 4)
    sinks = torch.tensor([0.5, -1.0])
    _, ours = hf.attention_forward(Attn("gpt_oss"), q, k, v, None, s_aux=sinks, output_attentions=True)
    assert (ours.sum(-1) < 1).all()  # the sink's share, as GPT-OSS's eager returns it
    _, ours = hf.attention_forward(Attn("granite_swa"), q, k, v, None, s_aux=sinks, output_attentions=True)
    torch.testing.assert_close(ours.sum(-1), torch.ones(1, 2, 3))  # without it, as Granite's eager
    with pytest.raises(TypeError, match="attention weights with sinks .* got model type 'future_model': call it "
                                        "without output_attentions"):
        hf.attention_forward(Attn("future_model"), q, k, v, None, s_aux=sinks, output_attentions=True)
    hf.attention_forward(Attn("future_model"), q, k, v, None, s_aux=sinks)  # (no weights asked: the output is one)
    with pytest.raises(TypeError, match="got an attention module with no config.model_type: call it without"):
        hf.attention_forward(torch.nn.Module(), q, k, v, None, s_aux=sinks, output_attentions=True)
    training = Attn("granite_swa").train()
    with pytest.raises(TypeError, match="cannot return granite_swa's attention weights .* under dropout"):
        hf.attention_forward(training, q, k, v, None, dropout=0.1, s_aux=sinks, output_attentions=True)


def test_attention_goes_through_attend(monkeypatch):
    calls = []
    real = hf.attention

    def spy(*a, **kw):
        calls.append(kw.get("causal"))
        return real(*a, **kw)

    monkeypatch.setattr(hf, "attention", spy)
    _, ours = _pair(DECODERS["gpt2"])
    with torch.no_grad():
        ours(input_ids=_ids(1, 6))
    assert calls == [True, True]  # one causal call per layer


def test_the_old_name_is_the_same_module():
    import attend.hf

    assert attend.hf is hf and attend.hf.register is hf.register


def test_register_rejects_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        hf.register("warp-drive")
    hf.register()  # back to "auto" for the other tests


@pytest.mark.parametrize("sliding", [None, 2])
def test_more_queries_than_keys_without_a_mask_is_top_left(sliding):
    """transformers' is_causal without a mask means top-left: query i sees keys 0..i (also when
    L > S, where attend's causal=True would align the last query with the last key)."""
    q, k, v = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)
    module = torch.nn.Module()
    module.is_causal = True
    out, w = hf.attention_forward(module, q, k, v, None, scaling=0.5, output_attentions=True,
                                         sliding_window=sliding)
    i, j = torch.arange(6).view(-1, 1), torch.arange(4).view(1, -1)
    allowed = (j <= i) & ((j > i - sliding) if sliding else True)
    ref_w = (0.5 * q @ k.transpose(-1, -2)).masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)
    if sliding:
        assert not allowed[5].any()  # a row that sees no key: zero, as attend promises
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(out, (ref_w @ v).transpose(1, 2))


def test_modernbert_flash_flag_is_accepted_and_equals_eager():
    """ModernBERT always passes deterministic=<its flash-attention flag>; False asks nothing."""
    cfg = T.ModernBertConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=64, pad_token_id=0,
                             global_attn_every_n_layers=2, local_attention=4)
    eager, ours = _pair(lambda: (T.ModernBertModel, cfg))
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    with torch.no_grad():
        e = eager(input_ids=ids, attention_mask=mask).last_hidden_state
        a = ours(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    _close(a[real], e[real], "modernbert hidden")
