"""train.monitor and train.restore_best: early stopping on the validation loss, ending with the best weights."""

import pytest
import torch
import torch.nn.functional as F

from deepscope.config import SpecError, validate_spec
from deepscope.data import Dataset
from deepscope.store import Store
from deepscope.training.callbacks import Callback
from deepscope.training.checkpoint import load_checkpoint
from deepscope.training.loop import train


def noisy_blobs(seed=0) -> Dataset:
    """Three Gaussian classes in 1x4x4; 40 training examples, half of their labels random: a net overfits."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(3, 1, 4, 4, generator=g)

    def split(n, noise):
        y = torch.randint(0, 3, (n,), generator=g)
        x = means[y] + 1.5 * torch.randn(n, 1, 4, 4, generator=g)
        flip = torch.rand(n, generator=g) < noise
        return x, torch.where(flip, torch.randint(0, 3, (n,), generator=g), y)

    return Dataset("noisy", (1, 4, 4), 3, ["a", "b", "c"], split(40, 0.5), split(200, 0.0), split(60, 0.0))


def make_spec(**train):
    return validate_spec({
        "name": "fit", "model": {"depth": 2, "width": 64, "activation": "relu"}, "init": {"scheme": "he_normal"},
        "optim": {"name": "adam", "lr": 0.01},
        "train": {"updates": 300, "batch_size": 10, "eval_every": 20, "device": "cpu", **train}})


class Snapshots(Callback):
    """Captures each evaluation's metrics and a copy of the weights, as the trainer has them then."""

    def __init__(self, stop_at=None):
        self.evals, self.stop_at = [], stop_at

    def on_step(self, ctx):
        if ctx.step == self.stop_at:
            raise KeyboardInterrupt

    def on_eval(self, ctx):
        state = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
        self.evals.append((ctx.step, dict(ctx.metrics), state))


def valid_loss(model, data) -> float:
    x, y = data.valid
    model.eval()
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


def test_restore_best_ends_with_the_weights_of_the_lowest_validation_loss(tmp_path):
    data, snaps, store = noisy_blobs(), Snapshots(), Store(tmp_path)
    result = train(make_spec(monitor="loss", restore_best=True), dataset=data, callbacks=[snaps], quiet=True,
                   store=store)
    losses = [m["valid/loss"] for _, m, _ in snaps.evals]
    best = losses.index(min(losses))
    step, metrics, state = snaps.evals[best]
    assert best < len(losses) - 1 and losses[-1] > 1.2 * losses[best]  # the set-up does overfit
    assert result.status == "finished" and result.step == 300  # no patience: the whole run
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    assert result.metrics["valid/loss"] == metrics["valid/loss"] and result.best["step"] == step
    assert valid_loss(result.model, data) == pytest.approx(losses[best], rel=1e-5)  # measured again, independently
    assert f"Restored the weights of update {step}" in result.message
    assert [r["value"] for r in store.scalars(result.run_id, "restored_step")] == [step]
    saved = load_checkpoint(result.checkpoint)["model"]
    assert all(torch.equal(saved[k], state[k]) for k in state)  # the final checkpoint holds the restored net
    # every evaluation stays in the store as it was measured
    assert [r["value"] for r in store.scalars(result.run_id, "valid/loss")] == pytest.approx(losses)


def test_patience_watches_the_monitored_validation_quantity():
    data = noisy_blobs()
    for monitor in ("loss", "error"):
        snaps = Snapshots()
        result = train(make_spec(monitor=monitor, patience=3), dataset=data, callbacks=[snaps], quiet=True)
        values = [m[f"valid/{monitor}"] for _, m, _ in snaps.evals]
        # independent: the first evaluation that is the 3rd in a row without a new strict minimum
        low, bad, stop = float("inf"), 0, None
        for i, v in enumerate(values):
            low, bad = (v, 0) if v < low else (low, bad + 1)
            if bad == 3:
                stop = i
                break
        assert stop is not None and stop == len(values) - 1, (monitor, values)
        assert result.step == snaps.evals[stop][0] < 300
        assert f"the validation {monitor} has not improved for 3 evaluations" in result.message
        # without restore_best the run ends with its last weights
        assert all(torch.equal(v, snaps.evals[-1][2][k]) for k, v in result.model.state_dict().items())


def test_restore_best_survives_a_resume(tmp_path):
    data, spec = noisy_blobs(), make_spec(monitor="loss", restore_best=True, checkpoint_every=20)
    whole = train(spec, dataset=data, quiet=True)
    store = Store(tmp_path)
    cut = train(spec, dataset=data, quiet=True, store=store, callbacks=[Snapshots(stop_at=250)])
    assert cut.status == "interrupted"
    resumed = train(store=store, resume=cut.run_id, dataset=data, quiet=True)
    assert resumed.best["step"] == whole.best["step"] < 240  # the best was before the interruption
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def test_an_unknown_monitor_is_named_with_the_allowed_values():
    with pytest.raises(SpecError) as e:
        make_spec(monitor="accuracy")
    assert "train.monitor" in str(e.value) and "accuracy" in str(e.value) and "loss" in str(e.value)


class Losses(Snapshots):
    def __init__(self):
        super().__init__()
        self.losses = {}

    def on_step(self, ctx):
        self.losses[ctx.step] = ctx.loss.item()


def test_a_restored_run_resumed_for_more_updates_goes_on_from_its_last_weights(tmp_path):
    data, store = noisy_blobs(), Store(tmp_path)
    straight = Losses()
    whole = train(make_spec(monitor="loss", restore_best=True, updates=300), dataset=data, quiet=True,
                  callbacks=[straight])
    first = train(make_spec(monitor="loss", restore_best=True, updates=200), dataset=data, quiet=True, store=store)
    assert first.restored is not None and first.restored < 200
    more = Losses()
    later = train(make_spec(monitor="loss", restore_best=True, updates=300), store=store, resume=first.run_id,
                  dataset=data, quiet=True, callbacks=[more])
    # updates 201-300 are those of the uninterrupted run: the resume trained on from update 200's weights
    assert more.losses == {s: v for s, v in straight.losses.items() if s > 200}
    assert later.restored == whole.restored
    assert all(torch.equal(a, b) for a, b in zip(later.model.state_dict().values(), whole.model.state_dict().values(),
                                                 strict=True))
    # the store's view of the run is the network it ended with; the stale restore of the first part is ignored
    last = store.get_run(first.run_id)["last"]
    assert last["valid/loss"] == {"step": later.restored, "value": later.metrics["valid/loss"]}


def test_store_and_report_show_the_restored_network_and_ignore_a_restore_trained_past(tmp_path):
    from deepscope.records import final_scalars

    data, store = noisy_blobs(), Store(tmp_path)
    r = train(make_spec(monitor="loss", restore_best=True), dataset=data, quiet=True, store=store)
    rows = store.scalars(r.run_id)
    measured = {row["step"]: row["value"] for row in rows if row["name"] == "valid/error"}
    assert final_scalars(rows)["valid/error"] == measured[r.restored] == r.metrics["valid/error"]
    assert store.get_run(r.run_id)["last"]["valid/error"] == {"step": r.restored, "value": measured[r.restored]}
    # a validation value logged after the restore (training went on): the last values again
    later = rows + [dict(step=r.step + 20, name="valid/error", value=0.5)]
    assert final_scalars(later)["valid/error"] == 0.5


def test_resuming_without_restore_best_keeps_the_last_weights(tmp_path):
    data, store = noisy_blobs(), Store(tmp_path)
    cut = train(make_spec(monitor="loss", restore_best=True, checkpoint_every=20), dataset=data, quiet=True,
                store=store, callbacks=[Snapshots(stop_at=250)])
    plain = train(make_spec(monitor="loss"), dataset=data, quiet=True)
    resumed = train(make_spec(monitor="loss"), store=store, resume=cut.run_id, dataset=data, quiet=True)
    assert resumed.restored is None and "Restored" not in resumed.message
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(),
                                                 plain.model.state_dict().values(), strict=True))


class NaNFirst(torch.nn.Module):
    """A small MLP whose first evaluation returns NaN logits (a bad validation example, say)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 64), torch.nn.ReLU(),
                                       torch.nn.Linear(64, 3))
        self.evals = 0

    def forward(self, x):
        out = self.net(x)
        if not self.training and len(x) == 200:  # the validation split
            self.evals += 1
            if self.evals == 1:
                return out * float("nan")
        return out


def test_a_nan_validation_loss_is_never_the_best():
    snaps = Snapshots()
    r = train(make_spec(monitor="loss", restore_best=True, patience=3), model=NaNFirst(), dataset=noisy_blobs(),
              quiet=True, callbacks=[snaps])
    losses = [m["valid/loss"] for _, m, _ in snaps.evals]
    assert losses[0] != losses[0]  # NaN at the first evaluation
    finite = [v for v in losses if v == v]
    assert r.best["valid/loss"] == min(finite) and r.best["step"] > snaps.evals[0][0]
    assert r.metrics["valid/loss"] == min(finite)


def test_doctor_judges_the_network_a_run_restored():
    from deepscope.workflows.run import diagnosis_run

    data = noisy_blobs()
    plain = diagnosis_run(make_spec(), dataset=data, updates=300, report=False, quiet=True)
    kept = diagnosis_run(make_spec(monitor="loss", restore_best=True), dataset=data, updates=300, report=False,
                         quiet=True)
    assert [f.severity for f in plain.findings if f.code == "overfitting"] == ["warning"]
    found = [f for f in kept.findings if f.code == "overfitting"]
    assert [f.severity for f in found] == ["info"] and "weights of update" in found[0].message
