"""Run by tests/integrations/test_integrations_lightning.py: one Lightning step under strategy="ddp" (2 CPU processes,
gloo) with the deepscope callback; each rank writes what it recorded to OUT/rank{N}.json.

Lightning's launcher starts rank 1 by running this same command again.
"""

import json
import sys

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deepscope.integrations.lightning import DeepscopeCallback


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))


class Module(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = network()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = sys.argv[1]
    callback = DeepscopeCallback(every=100, monitor=False, diagnose=False, log=False)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=2, strategy="ddp", logger=False, callbacks=[callback],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    x, y = data()
    trainer.fit(Module(), DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False))
    with open(f"{out}/rank{trainer.global_rank}.json", "w") as f:
        json.dump({"rank": trainer.global_rank, "probed": callback.probe is not None, "records": callback.records}, f)
    if torch.distributed.is_initialized():  # an orderly end: gloo threads left running can abort the exit
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
