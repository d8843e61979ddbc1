"""Everything a run is built from, before its first update: data, preprocessing, batches, evaluation sets, the
network (yours or the spec's), optimizer, schedule, the loss and the task it makes with the targets -- checked as
bad input before a run is stored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from deepscope.config import RunSpec, SpecError
from deepscope.data import Dataset, make_augment
from deepscope.data.loader import TrainBatches, compose
from deepscope.data.preprocess import Preprocessor
from deepscope.losses import CLASS, resolve
from deepscope.metrics import BINARY_TASK, CLASSIFICATION, MULTILABEL, TOKENS, Task, task_of
from deepscope.models import build_model
from deepscope.nn.activations import spec_for_module
from deepscope.optim import make_optimizer, make_schedule
from deepscope.registry import unknown
from deepscope.training.checkpoint import CheckpointError, check_resume
from deepscope.training.data_checks import check_loss, check_padding, check_splits, load_data
from deepscope.validate import check_batch_size

__all__ = ["FIT_SAMPLE", "LSUV_SAMPLE", "Setup", "build", "check_output", "describe_model", "output_problem",
           "recorded_spec", "setup_loss"]

FIT_SAMPLE = 5000  # stream examples the preprocessing is fitted on
LSUV_SAMPLE = 500  # training examples LSUV calibrates on
TASK_SAMPLE = 10_000  # targets of a stream the task is read from


@dataclass
class Setup:
    """A run's parts, built from its spec by :func:`build`."""

    data: Dataset
    pre: Preprocessor
    next_batch: TrainBatches  # the batch of update t, a function of t
    eval_sets: dict[str, tuple[Tensor, Tensor]]  # "valid", "test": preprocessed, on the device
    total: int  # updates of the whole run
    eval_every: int
    checkpoint_every: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    loss_fn: Any
    user_model: dict[str, str] | None  # your own module, described (None: the spec's network)
    task: Any = None  # the deepscope.metrics.Task the loss and the targets make
    user_loss: str | None = None  # the name of your own loss_fn (None: train.loss)


def build(spec: RunSpec, device: torch.device, checkpoint: dict | None, dataset: Dataset | None,
          user_model: nn.Module | None, run_id: str | None, loss_fn: Any = None) -> Setup:
    """The parts of the run ``spec`` on ``device``; with a ``checkpoint`` (a resume) the preprocessing is
    restored and the network built without initialization (the checkpoint's weights are loaded next)."""
    t = spec.train
    data = dataset if dataset is not None else load_data(spec)
    check_splits(data, targets=loss_fn is None, finite=not t.guard)  # lengths, not empty, finite: named as the data's
    if data.train is None and data.stream is None:
        raise SpecError(f"data.name={spec.data.name!r} has neither a training set nor a stream")
    if t.epochs is not None and data.train is None:
        raise SpecError(f"train.epochs={t.epochs} needs an in-memory training set; {data.name!r} is a stream "
                        "learned online: give train.updates instead")
    check_batch_size(spec, data)
    # the loss and the task it makes with the targets: a loss that does not fit them is named before any run
    loss, loss_info, task = setup_loss(spec, data, loss_fn)
    check_padding(task, data)

    # preprocessing, fitted on the training inputs (or a sample of the stream), or restored
    pre = Preprocessor(spec.data.preprocess or "none")
    preprocessing = [m for m in pre.methods if m != "none"]
    x_fit = None
    if checkpoint is None:
        if data.train is not None:
            x_fit = data.train[0]
        else:
            x_fit = data.stream.batch(0, FIT_SAMPLE if preprocessing or spec.init.scheme == "lsuv" else 2)[0]
        pre.fit(x_fit)
    else:
        try:
            pre.load_state_dict(checkpoint["preprocessor"])
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
            raise CheckpointError(f"the checkpoint of run {run_id} has a damaged preprocessor state "
                                  f"({type(e).__name__}); start the run again") from None
    pre.to(device)
    augment = make_augment(spec.data.augment, **spec.data.augment_options) if spec.data.augment else None
    x_dtype = (data.train[0] if data.train is not None else data.stream.batch(0, 1)[0]).dtype
    ids = x_dtype in (torch.int32, torch.int64)  # token ids: integers for an embedding, unless preprocessed
    casts = not x_dtype.is_floating_point and not ids  # uint8 images: pre makes them float
    augment = compose(Tensor.float, augment) if casts and augment is not None else augment  # kornia takes floats
    next_batch = TrainBatches(data, t.batch_size, t.seed, device, augment, pre if preprocessing or casts else None)
    eval_sets = {split: (pre(xy[0].to(device)), xy[1].to(device))
                 for split in ("valid", "test") if (xy := getattr(data, split)) is not None}

    total = t.updates if t.updates is not None else t.epochs * next_batch.per_epoch
    if checkpoint is not None:
        check_resume(run_id, checkpoint["spec"], spec.to_dict(), checkpoint["step"], total)
    eval_every = t.eval_every or (next_batch.per_epoch if t.epochs else max(1, total // 20))

    if user_model is not None:
        model = user_model.to(device)
        sample = next(iter(eval_sets.values())) if eval_sets else \
            (pre(x_fit[:2].to(device)), None) if x_fit is not None else None
        if sample is not None:  # before the store holds a run: a model that does not fit is bad input
            check_output(model, sample[0][:2], data.num_classes, task, sample[1][:2] if sample[1] is not None else None)
    else:
        if loss_info.output == "log_probabilities":
            key = "loss_fn" if loss_fn is not None else "train.loss"
            raise SpecError(f"{key}={loss_info.name!r} takes log-probabilities, and the spec's network "
                            f"(model.builder={spec.model.builder!r}) returns logits: use cross_entropy (log_softmax "
                            "then nll), or train your own module that ends in nn.LogSoftmax (model=...)")
        if ids and not preprocessing:
            raise SpecError(f"data {data.name!r}: the inputs are {str(x_dtype).removeprefix('torch.')}; the spec's "
                            f"network (model.builder={spec.model.builder!r}) takes floats: give float inputs, set "
                            "data.preprocess (it converts them), or train your own module (model=..., e.g. an "
                            "embedding of token ids)")
        lsuv = spec.init.scheme == "lsuv" and checkpoint is None
        x_lsuv = pre(x_fit[:LSUV_SAMPLE].to(device)).cpu() if lsuv else None
        model = build_model(spec, data.input_shape, data.num_classes, x=x_lsuv,
                            initialize=checkpoint is None).to(device)
        if task.kind != CLASSIFICATION and (few := _few(eval_sets, data, pre, device)):  # data.num_classes outputs
            x_out, y_out = few
            with torch.no_grad():
                out = model.eval()(x_out[:2])
            if problem := output_problem(task, out, y_out[:2], data.num_classes):
                raise SpecError(f"model.builder={spec.model.builder!r}: {problem} (the spec's network has one output "
                                f"per class of the data, num_classes={data.num_classes}; for other targets give the "
                                "Dataset that many outputs, or train your own module: model=...)")
            model.train()
    if loss_fn is not None and (few := _few(eval_sets, data, pre, device)):
        check_loss(loss, model, *few)
    optimizer = make_optimizer(spec.optim.name, model.parameters(), spec.optim.lr, **spec.optim.params)
    schedule = None
    if spec.schedule.name != "constant" or spec.schedule.params:
        schedule = make_schedule(spec.schedule.name, optimizer, total_updates=total, **spec.schedule.params)
    return Setup(data, pre, next_batch, eval_sets, total, eval_every, t.checkpoint_every or eval_every, model,
                 optimizer, schedule, loss, describe_model(user_model) if user_model is not None else None, task,
                 loss_info.name if loss_fn is not None else None)


def _few(eval_sets: dict, data: Dataset, pre: Preprocessor, device: torch.device) -> tuple[Tensor, Tensor] | None:
    """Two examples to try the network and the loss on: an evaluation set's, else the training set's."""
    if eval_sets:
        return next(iter(eval_sets.values()))
    return (pre(data.train[0][:2].to(device)), data.train[1][:2].to(device)) if data.train is not None else None


def setup_loss(spec: RunSpec, data: Dataset, loss_fn: Any = None):
    """``(loss function, LossInfo, Task)`` of a run: ``loss_fn`` (a callable of your own) or ``train.loss`` with
    ``train.loss_options``, and the task it makes with the data's targets (the training set's, else the validation
    set's, else a sample of the stream). A :class:`SpecError` names a loss that does not fit the targets, or a
    ``train.monitor`` that is not a metric of the task -- before any run is created."""
    t = spec.train
    try:
        fn, info = resolve(loss_fn if loss_fn is not None else t.loss, None if loss_fn is not None else t.loss_options)
        split = data.train if data.train is not None else data.valid
        targets = split[1] if split is not None else data.stream.batch(0, TASK_SAMPLE)[1]
        task = task_of(loss_fn if loss_fn is not None else t.loss, targets,
                       options=None if loss_fn is not None else t.loss_options,
                       num_classes=data.num_classes if info.family == CLASS else None,
                       key="loss_fn" if loss_fn is not None else "train.loss")
    except (ValueError, TypeError) as e:
        raise SpecError(f"{e} (data.name={data.name!r})") from None
    if t.monitor not in ("error", "loss", *task.metrics):
        others = [m for m in task.metrics if m != "error"]
        raise SpecError(unknown("train.monitor", t.monitor, ["error", "loss", *others],
                                what=f"train.monitor={t.monitor!r} is not a metric of this {task.kind} task"))
    return fn, info, task


def check_output(model: nn.Module, x: Tensor, num_classes: int, task: Any = None, y: Tensor | None = None) -> None:
    """One forward pass of the examples ``x`` in eval mode, without gradients and with the RNG left as it was:
    ValueError, in one line, unless ``model`` returns logits of shape ``(len(x), num_classes)`` -- or, for another
    ``task`` (:class:`deepscope.metrics.Task`) with targets ``y``, the output that task needs."""
    training = model.training
    cpu_rng = torch.get_rng_state()
    try:
        model.eval()
        with torch.no_grad():
            out = model(x)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"model: forward() fails on {len(x)} examples of shape {tuple(x.shape[1:])} from the data "
                         f"({type(e).__name__}: {first}); it must take inputs of that shape") from None
    finally:
        model.train(training)
        torch.set_rng_state(cpu_rng)
    if not isinstance(out, Tensor):
        raise ValueError(f"model: forward() returns a {type(out).__name__}; deepscope needs a tensor of logits of "
                         f"shape (N, {num_classes}) (return the logits alone)")
    if task is not None and task.kind != CLASSIFICATION and y is not None:
        if problem := output_problem(task, out, y, num_classes):
            raise ValueError(f"model: {problem}")
        return
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise ValueError(f"model: forward() returns shape {tuple(out.shape)} for {len(x)} examples; the data has "
                         f"{num_classes} classes, so it must be ({len(x)}, {num_classes})")


def output_problem(task: Task, output: Tensor, target: Tensor, num_classes: int | None = None) -> str | None:
    """What is wrong with the shape of a model's ``output`` for ``target`` under ``task``, in words; None if nothing."""
    n, shape = len(target), tuple(output.shape)
    if task.kind == CLASSIFICATION:
        want = (n, num_classes) if num_classes else None
        ok = output.ndim == 2 and output.shape[0] == n and (want is None or shape == want)
        expected = f"({n}, {num_classes or 'K'}): one score per class"
    elif task.kind == TOKENS:
        ok = output.ndim == 3 and shape[:2] == tuple(target.shape) and (num_classes is None or shape[2] == num_classes)
        expected = f"({n}, {target.shape[1]}, {num_classes or 'K'}): one score per token and class"
    else:
        ok = output.ndim >= 1 and output.shape[0] == n and output.numel() == target.numel()
        what = {BINARY_TASK: "one logit per example", MULTILABEL: "one logit per label"}.get(task.kind,
                                                                                            "one value per target")
        expected = f"{tuple(target.shape)} (or {(n, 1)}) : {what}" if target.ndim == 1 else \
            f"{tuple(target.shape)}: {what}"
    return None if ok else f"the model returns shape {shape} for {n} examples; the {task.kind} task needs {expected}"


def describe_model(model: nn.Module) -> dict[str, str]:
    """A user's module as a spec section: its class, and its activation when it uses exactly one."""
    names = {s.name for m in model.modules() if (s := spec_for_module(m)) is not None}
    return {"class": type(model).__name__, **({"activation": names.pop()} if len(names) == 1 else {})}


def recorded_spec(spec: RunSpec, user_model: dict[str, str] | None, user_loss: str | None = None) -> dict[str, Any]:
    """The spec as the store shows it: with your own model, ``[model]`` describes that module instead and there is no
    ``[init]`` (the spec's initialization is not applied to your module); with your own loss, ``train.loss`` is its
    name."""
    data = spec.to_dict()
    if user_model is not None:
        data["model"] = dict(user_model)
        data.pop("init", None)
    if user_loss is not None:
        data["train"]["loss"], data["train"]["loss_options"] = user_loss, {}
    return data
