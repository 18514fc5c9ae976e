"""Attention viewer pages for whole models: a translator run, a BERT-family encoder (the
packaged all-MiniLM-L6-v2 or a Hugging Face folder) and any Hugging Face encoder–decoder.

- :func:`translation_view`: translate the sentences, then show the attention behind each
  output word — for the RNN translator its one cross-attention, for the transformer
  translator every layer and head of the encoder's and decoder's self-attention and of the
  cross-attention (a teacher-forced pass over the translation it produced);
- :func:`hf_seq2seq_view`: the same three sections for a Hugging Face encoder–decoder
  (BART, Marian, T5, ...), over a given target or the one it generates;
- encoders: :meth:`attend.viz.AttentionView.from_encoder`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..viz import AttentionView

__all__ = ["translation_view", "hf_seq2seq_view"]


def _sentences(sentences) -> list[str]:
    if isinstance(sentences, str) or not isinstance(sentences, Sequence) or not sentences \
            or not all(isinstance(s, str) and s.strip() for s in sentences):
        raise TypeError("sentences: expected a non-empty list of non-empty strings")
    return list(sentences)


@torch.no_grad()
def translation_view(translator, sentences: Sequence[str], *, title: Optional[str] = None,
                     max_tokens: int = 4096) -> AttentionView:
    """The attention of an :class:`attend.apps.translate.Translator` on ``sentences`` (greedy)."""
    from ..data.text import Vocab
    from ..models.transformer import TransformerSeq2Seq

    sentences = _sentences(sentences)
    results = translator.translate(sentences)
    title = title or "Attention of the translator"
    model = translator.model
    sources = [r.source for r in results]
    targets = [r.tokens or ["<eos>"] for r in results]
    if not isinstance(model, TransformerSeq2Seq):
        if any(r.weights is None for r in results):
            raise ValueError("this translator has no attention (it was trained with attention='none')")
        cross = [r.weights[None, None] if r.tokens else torch.zeros(1, 1, 1, len(r.source)) for r in results]
        return AttentionView.seq2seq(sources, targets, cross=cross, labels=sentences, title=title,
                                     max_tokens=max_tokens)
    model.eval()
    enc_att, dec_att, cross, dec_rows = [], [], [], []
    for r, shown in zip(results, targets):
        # position t reads the word before output word t (<bos> first) and produces output word t
        inputs = ["<bos>", *r.tokens[:-1]] if r.tokens else ["<bos>"]
        src = torch.tensor([translator.src_vocab.encode(r.source)])
        tgt_in = torch.tensor([[Vocab.bos_id, *translator.tgt_vocab.encode(inputs[1:])]])
        mask = torch.ones_like(src, dtype=torch.bool)
        enc = model.encoder(model.src_embed(src) * model.scale, key_mask=mask, need_weights=True)
        dec = model.decoder(model.tgt_embed(tgt_in) * model.scale, enc.hidden, memory_mask=mask, need_weights=True)
        enc_att.append([a[0] for a in enc.attentions])
        dec_att.append([a[0] for a in dec.self_attentions])
        cross.append([a[0] for a in dec.cross_attentions])
        dec_rows.append(inputs)
    return AttentionView.seq2seq(sources, targets, cross=cross, encoder=enc_att, decoder=dec_att, decoder_tokens=dec_rows,
                                 labels=sentences, title=title, max_tokens=max_tokens,
                                 note="cross-attention rows are the words the translator wrote; its decoder "
                                      "self-attention is over the decoder's inputs (<bos> and the words written so far)")


@torch.no_grad()
def hf_seq2seq_view(model, tokenizer, sources: Sequence[str], *, targets: Optional[Sequence[str]] = None,
                    max_new_tokens: int = 40, title: Optional[str] = None, max_tokens: int = 4096) -> AttentionView:
    """A Hugging Face encoder–decoder's attention on ``sources``, over ``targets`` (teacher
    forced) or, without them, over what ``model.generate`` writes (greedy). The model must
    return attention weights (``attn_implementation="eager"`` or ``"attend"``)."""
    sources = _sentences(sources)
    if targets is not None and (isinstance(targets, str) or len(targets) != len(sources)):
        raise ValueError(f"targets: expected one per source ({len(sources)}), got "
                         f"{1 if isinstance(targets, str) else len(targets)}")
    if not getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise TypeError(f"model: expected a Hugging Face encoder-decoder model, got {type(model).__name__}")
    model.eval()
    start_id = model.config.decoder_start_token_id
    if targets is not None and start_id is None:
        raise ValueError("model.config.decoder_start_token_id is not set: the decoder's first input is unknown")
    src_toks, tgt_toks, enc_att, dec_att, cross, inputs = [], [], [], [], [], []
    for k, text in enumerate(sources):
        enc = tokenizer(text, return_tensors="pt")
        if targets is not None:
            labels = tokenizer(text_target=targets[k], return_tensors="pt").input_ids
            start = torch.full((1, 1), start_id, dtype=torch.long)
            dec_in = torch.cat([start, labels[:, :-1]], dim=1)
            shown = labels[0]
        else:
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
            dec_in = out[:, :-1]
            shown = out[0, 1:]
        res = model(**enc, decoder_input_ids=dec_in, output_attentions=True)
        if not res.cross_attentions or res.cross_attentions[0] is None:
            raise ValueError("the model returned no attention weights: load it with attn_implementation='eager' "
                             "(or 'attend')")
        inputs.append(tokenizer.convert_ids_to_tokens(dec_in[0].tolist()))  # what the decoder read
        src_toks.append(tokenizer.convert_ids_to_tokens(enc.input_ids[0].tolist()))
        tgt_toks.append(tokenizer.convert_ids_to_tokens(shown.tolist()))
        enc_att.append([a[0] for a in res.encoder_attentions])
        dec_att.append([a[0] for a in res.decoder_attentions])
        cross.append([a[0] for a in res.cross_attentions])
    return AttentionView.seq2seq(src_toks, tgt_toks, cross=cross, encoder=enc_att, decoder=dec_att, decoder_tokens=inputs,
                                 labels=sources, title=title or f"Attention of {type(model).__name__}",
                                 max_tokens=max_tokens)
