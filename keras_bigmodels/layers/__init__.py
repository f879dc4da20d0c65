"""Drop-in Keras layers backed by fused kernels (`kbm.layers`)."""

from keras_bigmodels.layers.fused_dense import FusedDense
from keras_bigmodels.layers.grouped_query_attention import (
    GroupedQueryAttention,
)
from keras_bigmodels.layers.layer_normalization import LayerNormalization
from keras_bigmodels.layers.multi_head_attention import MultiHeadAttention
from keras_bigmodels.layers.position_embedding import PositionEmbedding
from keras_bigmodels.layers.rms_normalization import RMSNormalization
from keras_bigmodels.layers.rotary_embedding import (
    RotaryEmbedding,
    apply_rotary_embedding,
)
from keras_bigmodels.layers.token_and_position_embedding import (
    TokenAndPositionEmbedding,
)
from keras_bigmodels.layers.transformer_decoder import TransformerDecoder
from keras_bigmodels.layers.transformer_encoder import TransformerEncoder

__all__ = [
    "FusedDense",
    "GroupedQueryAttention",
    "LayerNormalization",
    "MultiHeadAttention",
    "PositionEmbedding",
    "RMSNormalization",
    "RotaryEmbedding",
    "TokenAndPositionEmbedding",
    "TransformerDecoder",
    "TransformerEncoder",
    "apply_rotary_embedding",
]
