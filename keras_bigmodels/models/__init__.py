"""Pretrained models on kbm's fused layers (`kbm.models`).

```python
path = kbm.models.minilm_l6_v2_path()
encoder = kbm.models.BertEncoder.from_checkpoint(path)
tokenizer = kbm.models.WordPieceTokenizer.from_checkpoint(path)
inputs = tokenizer.encode(["A first sentence.", "A second one."])
embeddings = kbm.models.mean_pool(encoder(inputs), inputs["padding_mask"])
```
"""

from keras_bigmodels.models.bert import BertEncoder
from keras_bigmodels.models.pooling import MeanPooling, mean_pool
from keras_bigmodels.models.presets import minilm_l6_v2_path
from keras_bigmodels.models.safetensors import (
    load_safetensors,
    read_safetensors_header,
)
from keras_bigmodels.models.tokenizer import WordPieceTokenizer

__all__ = [
    "BertEncoder",
    "MeanPooling",
    "WordPieceTokenizer",
    "load_safetensors",
    "mean_pool",
    "minilm_l6_v2_path",
    "read_safetensors_header",
]
