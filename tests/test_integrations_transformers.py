"""The Hugging Face callback on a tiny BERT built from a config (no download): records at the right global
steps, leaves training untouched, logs through trainer.log (TensorBoard reporter), diagnoses, reports."""

import copy

import pytest
import torch
from torch.utils.data import Dataset

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("tensorboard")

from deepscope.integrations.trackers import read_tensorboard  # noqa: E402
from deepscope.integrations.transformers import DeepscopeCallback  # noqa: E402

EVERY, STEPS, LENGTH = 10, 25, 12


class Tokens(Dataset):
    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, 100, (n, LENGTH), generator=g)
        self.labels = (self.ids[:, 0] > 50).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(LENGTH, dtype=torch.long),
                "labels": self.labels[i]}


def model():
    config = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


def train(out, probe: bool):
    net = model()
    initial = copy.deepcopy(net.state_dict())
    args = transformers.TrainingArguments(str(out), max_steps=STEPS, per_device_train_batch_size=8, learning_rate=1e-3,
                                          logging_steps=5, report_to=["tensorboard"], save_strategy="no",
                                          disable_tqdm=True, use_cpu=True, seed=0, gradient_accumulation_steps=2)
    trainer = transformers.Trainer(model=net, args=args, train_dataset=Tokens(256, 0), eval_dataset=Tokens(48, 1))
    callback = DeepscopeCallback(every=EVERY).attach(trainer) if probe else None
    trainer.train()
    return trainer, callback, initial


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf")
    return tmp, train(tmp / "probed", True), train(tmp / "plain", False)


def test_records_at_global_steps(runs):
    _, (_, callback, _), _ = runs
    steps = {source: sorted({r["step"] for r in callback.records if r["source"] == source})
             for source in ("monitor", "train")}
    assert steps == {"monitor": [0, 10, 20], "train": [0, 10, 20]}
    assert [r["step"] for r in callback.scalars] == [5, 10, 15, 20, 25]  # the Trainer's logged loss


def test_training_identical_to_a_run_without_the_callback(runs):
    _, (trainer, _, initial), (plain, _, plain_initial) = runs
    for key, value in plain_initial.items():
        assert torch.equal(initial[key], value)
    for (k, a), (_, b) in zip(trainer.model.state_dict().items(), plain.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    state, plain_state = trainer.optimizer.state_dict()["state"], plain.optimizer.state_dict()["state"]
    assert state.keys() == plain_state.keys()
    for i, s in plain_state.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state[i][key], s[key])


def test_monitor_is_the_evaluation_set(runs):
    """The step-0 monitor record of the first feed-forward activation equals its output on the 48 evaluation
    examples, computed here on the initial weights in eval mode with a hook of our own; the monitor pass
    back-propagates the model's own loss (dLoss/ds is recorded)."""
    _, (_, callback, initial), _ = runs
    net = model()
    net.load_state_dict(initial)
    net.eval()
    data = Tokens(48, 1)
    seen = []
    net.bert.encoder.layer[0].intermediate.intermediate_act_fn.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        net(input_ids=data.ids, attention_mask=torch.ones_like(data.ids))
    z = seen[0]
    got = {r["stat"]: r["value"] for r in callback.records if r["step"] == 0 and r["source"] == "monitor"
           and r["quantity"] == "activation" and r["layer"] == "bert.encoder.layer.0.intermediate.intermediate_act_fn"}
    assert got["mean"] == pytest.approx(z.mean().item(), abs=1e-6)
    assert got["std"] == pytest.approx(z.std(correction=0).item(), rel=1e-5)
    assert any(r["quantity"] == "preact_grad" for r in callback.records if r["source"] == "monitor")


def test_scalars_through_trainer_log_into_tensorboard(runs):
    tmp, (trainer, callback, _), _ = runs
    expected = {(r["step"], f"deepscope/{r['source']}/{r['quantity']}/{r['stat']}/{r['layer']}"): r["value"]
                for r in callback.records}
    history = {(h["step"], k): v for h in trainer.state.log_history for k, v in h.items() if k.startswith("deepscope/")}
    assert history == pytest.approx(expected, rel=1e-9)
    stats, histograms, scalars = read_tensorboard(tmp / "probed")
    assert {(r["step"], f"deepscope/{r['source']}/{r['quantity']}/{r['stat']}/{r['layer']}"): r["value"]
            for r in stats} == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert len(histograms) == len(callback.histograms)
    assert [r["step"] for r in scalars if r["name"] == "train/loss"] == [5, 10, 15, 20, 25]


def test_findings_and_report_written(runs):
    tmp, (_, callback, _), _ = runs
    assert callback.report_path == tmp / "probed" / "deepscope-report.html"
    html = callback.report_path.read_text()
    assert "BertForSequenceClassification" in html and "data:image/png;base64" in html
    from deepscope.diagnosis import diagnose

    expected = diagnose(callback.records, scalars=callback.scalars, histograms=callback.histograms)
    assert [(f.code, f.layers) for f in callback.findings] == [(f.code, f.layers) for f in expected]
    assert all(f.code in html for f in expected)


def test_tensor_monitor_scored_by_logits(tmp_path):
    """monitor=(x, y) tensors on a GPT-2 LM: the monitor pass scores output.logits with cross-entropy."""
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
                                      eos_token_id=0)
    torch.manual_seed(0)
    lm = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 50, (32, 8), generator=torch.Generator().manual_seed(0))

    class LM(Dataset):
        def __len__(self):
            return len(ids)

        def __getitem__(self, i):
            return {"input_ids": ids[i], "labels": ids[i]}

    args = transformers.TrainingArguments(str(tmp_path), max_steps=4, per_device_train_batch_size=8, report_to=[],
                                          save_strategy="no", disable_tqdm=True, use_cpu=True)
    callback = DeepscopeCallback(every=2, monitor=(ids[:16, :-1], ids[:16, 1:]), diagnose=False)
    transformers.Trainer(model=lm, args=args, train_dataset=LM(), callbacks=[callback]).train()
    monitor = [r for r in callback.records if r["source"] == "monitor"]
    assert sorted({r["step"] for r in monitor}) == [0, 2, 4]
    assert any(r["quantity"] == "activation" and r["layer"] == "transformer.h.0.mlp" for r in monitor)


def test_logits_loss_is_the_models_own_loss():
    from deepscope.integrations.transformers import logits_loss

    net = model()
    data = Tokens(8, 2)
    out = net(input_ids=data.ids, labels=data.labels)
    assert logits_loss(out, data.labels).item() == pytest.approx(out.loss.item(), rel=1e-6)
    assert logits_loss(out.to_tuple()[1:], data.labels).item() == pytest.approx(out.loss.item(), rel=1e-6)
