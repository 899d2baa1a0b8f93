"""CLS pooling: a small transformer reads each frame's layer vectors and summarises them in a CLS token."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from interfaces.base import Interface, check_int


def attend_from_first_token(attention: nn.MultiheadAttention, tokens: torch.Tensor) -> torch.Tensor:
    """Multi-head self-attention output at position 0 only: tokens x [N, S, D] -> [N, D].

    Equal to ``attention(x[:, :1], x, x)[0][:, 0]`` but without projecting the S keys and values. For head h
    with query q_h = (W_q x_0 + b_q)_h / sqrt(d_h), the scores q_h . (W_{k,h} x_s + b_{k,h}) equal
    (W_{k,h}^T q_h) . x_s plus a term constant over s, which the softmax cancels; and since the weights a_h sum
    to 1, sum_s a_{h,s} (W_{v,h} x_s + b_{v,h}) = W_{v,h} (sum_s a_{h,s} x_s) + b_{v,h}. So each head costs two
    D x d_h products and two length-S mixes of D-vectors instead of S key and S value projections.
    """
    num_tokens, _, hidden_size = tokens.shape
    num_heads = attention.num_heads
    head_size = hidden_size // num_heads
    w_query, w_key, w_value = attention.in_proj_weight.chunk(3)
    b_query, _, b_value = attention.in_proj_bias.chunk(3)
    query = F.linear(tokens[:, 0], w_query, b_query).view(num_tokens, num_heads, head_size) * head_size**-0.5
    # einsum batches over heads without materialising a per-token copy of the weights.
    query_in_input_space = torch.einsum("nhe,hed->nhd", query, w_key.view(num_heads, head_size, hidden_size))
    scores = torch.bmm(query_in_input_space, tokens.transpose(1, 2))  # [N, H, S]
    weights = F.dropout(torch.softmax(scores, dim=-1), attention.dropout, attention.training)
    mixed = torch.bmm(weights, tokens)  # [N, H, D]
    values = torch.einsum("nhd,hed->nhe", mixed, w_value.view(num_heads, head_size, hidden_size))
    values = values + b_value.view(num_heads, head_size)
    return attention.out_proj(values.reshape(num_tokens, hidden_size))


def encode_first_token(layer: nn.TransformerEncoderLayer, tokens: torch.Tensor) -> torch.Tensor:
    """The output of a post-norm encoder ``layer`` at position 0 only: tokens [N, S, D] -> [N, D].

    Equal to ``layer(tokens)[:, 0]``: only the first token queries the attention (see
    ``attend_from_first_token``) and goes through the feed-forward block, under a tenth of the full layer's
    multiply-adds for S = 14 tokens of D = 768.
    """
    first = tokens[:, 0]
    first = layer.norm1(first + layer.dropout1(attend_from_first_token(layer.self_attn, tokens)))
    feed_forward = layer.linear2(layer.dropout(layer.activation(layer.linear1(first))))
    return layer.norm2(first + layer.dropout2(feed_forward))


class CLSPooling(Interface):
    """Per frame, a transformer encoder over the sequence [c; h_{0,t}; ...; h_{L-1,t}] of L+1 tokens,
    where c is a learnable CLS vector (initialised N(0, 0.02^2)); the output is the encoder's CLS position:

        y_t = Encoder([c; h_{0,t}; ...; h_{L-1,t}])_0.

    The encoder is ``num_tf_layers`` post-norm ``nn.TransformerEncoderLayer``s with d_model D, ``nhead``
    heads, feed-forward width ``dim_feedforward`` and ReLU. There is no positional encoding (the paper's
    parameter count has none): tokens are told apart by their content only, unless ``layer_embedding``
    adds a learnable vector per position ((L+1)*D more parameters). One layer at D=768 has 5,513,984 parameters, plus 768 for c.
    Output size D. All B*T frames are encoded as one batch of short sequences, and the last layer is
    evaluated at the CLS position only (the other positions of its output are never used).
    """

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        num_tf_layers: int = 1,
        nhead: int = 8,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        layer_embedding: bool = False,
        normalize: bool = False,
    ) -> None:
        super().__init__(num_layers, hidden_size, normalize)
        owner = type(self).__name__
        self.num_tf_layers = check_int(owner, "num_tf_layers", num_tf_layers, 1)
        self.nhead = check_int(owner, "nhead", nhead, 1, hidden_size)
        if hidden_size % nhead:
            raise ValueError(
                f"{owner}: nhead must divide hidden_size={hidden_size}, got nhead={nhead}; "
                f"allowed: a divisor of {hidden_size} in [1, {hidden_size}]"
            )
        self.dim_feedforward = check_int(owner, "dim_feedforward", dim_feedforward, 1)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{owner}: dropout must be in [0, 1), got {dropout}")
        self.dropout = float(dropout)
        self.cls_token = nn.Parameter(torch.randn(hidden_size) * 0.02)
        self.position_embedding = (
            nn.Parameter(torch.zeros(num_layers + 1, hidden_size)) if layer_embedding else None
        )
        self.encoder_layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                hidden_size, nhead, dim_feedforward=dim_feedforward, dropout=dropout, batch_first=True
            )
            for _ in range(num_tf_layers)
        )
        self.output_size = hidden_size

    def combine(self, hidden_states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        num_layers, batch_size, num_frames, hidden_size = hidden_states.shape
        num_tokens = batch_size * num_frames
        layer_tokens = hidden_states.permute(1, 2, 0, 3).reshape(num_tokens, num_layers, hidden_size)
        cls = self.cls_token.to(layer_tokens.dtype).expand(num_tokens, 1, hidden_size)
        tokens = torch.cat([cls, layer_tokens], dim=1)  # [B*T, L+1, D]
        if self.position_embedding is not None:
            tokens = tokens + self.position_embedding.to(tokens.dtype)
        for layer in self.encoder_layers[:-1]:
            tokens = layer(tokens)
        cls_output = encode_first_token(self.encoder_layers[-1], tokens)
        return cls_output.reshape(batch_size, num_frames, hidden_size)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_tf_layers={self.num_tf_layers}, "
            f"nhead={self.nhead}, dim_feedforward={self.dim_feedforward}, dropout={self.dropout}, "
            f"layer_embedding={self.position_embedding is not None}"
        )
