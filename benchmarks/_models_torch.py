"""The PyTorch peer of benchmarks/models.py (runs in the torch venv).

Hugging Face transformers' `BertModel` with the classifier head of the kbm
benchmark (masked mean pooling, dropout 0.1, a 2-way linear layer),
`torch.optim.AdamW`, eager mode. Imports neither TensorFlow nor kbm.
"""

import os

import torch
from torch import nn


class _Classifier(nn.Module):
    def __init__(self, bert, hidden):
        super().__init__()
        self.bert = bert
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(hidden, 2)

    def forward(self, ids, mask):
        seq = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(seq.dtype)
        pooled = (seq * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.head(self.dropout(pooled))


def _minilm_path():
    """The checkpoint's directory: the driver, whose Python has the
    checkpoint package, passes it in KBM_MINILM_PATH."""
    path = os.environ.get("KBM_MINILM_PATH")
    if path:
        return path
    raise RuntimeError(
        "the all-MiniLM-L6-v2 checkpoint was not found: set KBM_MINILM_PATH"
    )


def tasks(cfg, length, threads, token_batch):
    """{task: fn(batch)} for the training step and inference."""
    from transformers import BertConfig, BertModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if cfg["checkpoint"]:
        bert = BertModel.from_pretrained(
            _minilm_path(), add_pooling_layer=False
        )
    else:
        bert = BertModel(
            BertConfig(
                vocab_size=30522,
                hidden_size=cfg["hidden"],
                num_hidden_layers=cfg["num_layers"],
                num_attention_heads=cfg["heads"],
                intermediate_size=cfg["intermediate"],
                hidden_dropout_prob=0.1,
                attention_probs_dropout_prob=0.1,
            ),
            add_pooling_layer=False,
        )
    model = _Classifier(bert, cfg["hidden"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    loss_fn = nn.CrossEntropyLoss()
    data = {}

    def get(batch):
        if batch not in data:
            ids, labels = token_batch(batch, length)
            ids = torch.from_numpy(ids).long()
            data[batch] = (
                ids,
                (ids != 0).long(),
                torch.from_numpy(labels).long(),
            )
        return data[batch]

    def train(batch):
        ids, mask, labels = get(batch)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(ids, mask), labels)
        loss.backward()
        optimizer.step()
        return float(loss)

    def infer(batch):
        ids, mask, _ = get(batch)
        model.eval()
        with torch.inference_mode():
            return model(ids, mask)

    return {"train": train, "infer": infer}
