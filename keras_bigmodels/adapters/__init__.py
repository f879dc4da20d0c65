"""LoRA and DoRA adapters with exact merge (`kbm.adapters`).

```python
import keras_bigmodels as kbm

kbm.adapters.enable_lora(model, rank=8)        # attention query and value
model.compile(kbm.optimizers.AdamW(1e-3), loss=...)
model.fit(...)                                 # trains only the adapters
kbm.adapters.save_adapters(model, "task.safetensors")
kbm.adapters.merge(model)                      # plain layers, no extra op
```
"""

from keras_bigmodels.adapters.io import (
    load_adapters,
    load_model,
    save_adapters,
    save_model,
)
from keras_bigmodels.adapters.lora import (
    active_adapter,
    adapter_names,
    enable_dora,
    enable_lora,
    merge,
    requantization_error,
    set_active,
    trainable_fraction,
    unmerge,
)

__all__ = [
    "active_adapter",
    "adapter_names",
    "enable_dora",
    "enable_lora",
    "load_adapters",
    "load_model",
    "merge",
    "requantization_error",
    "save_adapters",
    "save_model",
    "set_active",
    "trainable_fraction",
    "unmerge",
]
