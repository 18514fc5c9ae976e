"""Pictures of attention: the HTML attention viewer (no extra needed) and PNG heat maps
and plots (matplotlib, the ``viz`` extra).

No global matplotlib state is touched: figures are drawn on their own Agg canvas, so
importing attend never changes a user's matplotlib backend.
"""
from . import aggregate
from .html import AttentionView, attention_page, seq2seq_page
from .plots import attention_heatmap, bleu_by_length_plot

__all__ = ["AttentionView", "attention_page", "seq2seq_page", "aggregate", "attention_heatmap", "bleu_by_length_plot"]
