"""Each fix of deepscope.diagnosis.fixes against its definition: spec edits, module surgery, re-init formulas."""

import json
import math

import pytest
import torch
from torch import nn

from deepscope.config import validate_spec
from deepscope.diagnosis.findings import CODES
from deepscope.diagnosis.fixes import FIXES, FIXES_FOR, AsLogits, NotApplicable, TrainMode, apply_fix, apply_fixes


def spec(**sections) -> dict:
    base = {"name": "s", "model": {"activation": "tanh"}, "init": {"scheme": "glorot_uniform"},
            "optim": {"name": "sgd", "lr": 0.05}, "train": {"updates": 100}}
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return validate_spec(base).to_dict()


def changed(before: dict, after: dict) -> dict:
    """{section.key: (before, after)} of the keys that differ."""
    out = {}
    for section in before.keys() | after.keys():
        b, a = before.get(section), after.get(section)
        if isinstance(b, dict) and isinstance(a, dict):
            out.update({f"{section}.{k}": (b.get(k), a.get(k)) for k in b.keys() | a.keys() if b.get(k) != a.get(k)})
        elif b != a:
            out[section] = (b, a)
    return out


def test_every_finding_code_has_candidate_fixes_that_exist():
    assert set(CODES) - {"diagnosis_error", "unobservable"} <= set(FIXES_FOR)  # two notes, not problems
    assert all(name in FIXES for names in FIXES_FOR.values() for name in names)


@pytest.mark.parametrize("name, factor", [("lr_x0.1", 0.1), ("lr_x0.3", 0.3), ("lr_x3", 3.0), ("lr_x10", 10.0)])
def test_learning_rate_fixes_scale_the_rate_and_nothing_else(name, factor):
    before = spec()
    after, model = apply_fix(name, before)
    assert changed(before, after) == {"optim.lr": (0.05, pytest.approx(0.05 * factor))} and model is None
    validate_spec(after)


def test_schedule_optimizer_clipping_and_preprocessing_fixes():
    before = spec()
    assert changed(before, apply_fix("warmup_cosine", before)[0]) == {"schedule.name": ("constant", "warmup_cosine")}
    plateau = apply_fix("reduce_on_plateau", before)[0]["schedule"]
    assert plateau == {"name": "reduce_on_plateau", "factor": 0.3, "patience": 1}
    assert changed(before, apply_fix("momentum", before)[0]) == {"optim.name": ("sgd", "momentum")}
    assert changed(before, apply_fix("adam", before)[0]) == {"optim.name": ("sgd", "adam"), "optim.lr": (0.05, 1e-3)}
    assert changed(before, apply_fix("clip_norm", before)[0]) == {"train.clip_norm": (None, 1.0)}
    assert apply_fix("center", before)[0]["data"]["preprocess"] == ["center"]
    assert apply_fix("standardize", before)[0]["data"]["preprocess"] == ["standardize"]
    for name in ("warmup_cosine", "momentum", "adam", "clip_norm", "center", "standardize"):
        validate_spec(apply_fix(name, before)[0])


@pytest.mark.parametrize("name, sections, reason", [
    ("warmup_cosine", {"schedule": {"name": "cosine"}}, "already anneals"),
    ("momentum", {"optim": {"name": "adam", "lr": 1e-3}}, "replaces plain SGD"),
    ("clip_norm", {"train": {"clip_norm": 5.0}}, "already clipped"),
    ("center", {"data": {"preprocess": "standardize"}}, "already preprocessed"),
    ("reinit", {}, "already fits tanh"),
    ("act_tanh", {}, "replaces sigmoid"),
    ("batch_norm", {"model": {"norm": "batch"}}, "already has batch"),
    ("unfreeze", {}, "module of your own"),
])
def test_a_fix_that_does_not_apply_says_why(name, sections, reason):
    with pytest.raises(NotApplicable, match=reason):
        apply_fix(name, spec(**sections))


@pytest.mark.parametrize("activation, scheme", [("sigmoid", "glorot_uniform"), ("relu", "he_normal"),
                                                ("selu", "lecun_normal")])
def test_reinit_sets_the_scheme_the_activation_registry_pairs_it_with(activation, scheme):
    before = spec(model={"activation": activation}, init={"scheme": "normal", "std": 1.0})
    after, _ = apply_fix("reinit", before)
    assert after["init"] == {"scheme": scheme} and changed(before, after).keys() == {"init.scheme", "init.std"}


def test_activation_swaps_take_the_init_that_fits_the_new_activation():
    sick = spec(model={"activation": "sigmoid"}, init={"scheme": "normal", "std": 1.0})
    after, _ = apply_fix("act_tanh", sick)
    assert after["model"]["activation"] == "tanh" and after["init"] == {"scheme": "glorot_uniform"}
    dead = spec(model={"activation": "relu", "activation_kwargs": {}}, init={"scheme": "he_normal"})
    assert apply_fix("act_leaky_relu", dead)[0]["model"]["activation"] == "leaky_relu"
    assert apply_fix("act_prelu", dead)[0]["init"] == {"scheme": "he_normal"}
    lsuv = spec(model={"activation": "relu"}, init={"scheme": "lsuv"})
    assert apply_fix("act_leaky_relu", lsuv)[0]["init"] == {"scheme": "lsuv"}  # LSUV adapts by itself


def test_batch_norm_fix_builds_a_network_with_batch_norm_after_each_hidden_layer():
    from deepscope.models import build_model

    after, _ = apply_fix("batch_norm", spec(model={"depth": 3, "width": 8}))
    net = build_model(validate_spec(after), (1, 4, 4), 3)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in net.modules()) == 3


def test_apply_fix_leaves_its_inputs_alone_and_rejects_unknown_names():
    before = spec()
    copy = json.loads(json.dumps(before))
    net = mlp_sequential()
    weights = [p.detach().clone() for p in net.parameters()]
    apply_fixes(["lr_x0.1", "reinit", "batch_norm"], before, net)
    assert before == copy and len(list(net.modules())) == 7
    assert all(torch.equal(a, b) for a, b in zip(weights, net.parameters(), strict=True))
    with pytest.raises(ValueError, match="fix=.nope. is not known; choose one of: lr_x0.01, lr_x0.1"):
        apply_fix("nope", before)


# --- module surgery ------------------------------------------------------------------------------------


def mlp_sequential(act=nn.ReLU, sizes=(16, 32, 32, 4)) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def test_batch_norm_surgery_inserts_after_each_hidden_linear_and_leaves_other_parameters_untouched():
    net = mlp_sequential()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(50, 16)
    before = net.eval()(x)
    _, fixed = apply_fix("batch_norm", spec(), net)
    kinds = [type(m) for m in fixed.children()]
    assert kinds == [nn.Flatten, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    new_state = fixed.state_dict()
    assert all(torch.equal(new_state[key], value) for key, value in state.items())  # same values, same names
    bn = [m for m in fixed.modules() if isinstance(m, nn.BatchNorm1d)]
    assert all(torch.equal(m.weight, torch.ones(32)) and torch.equal(m.bias, torch.zeros(32)) for m in bn)
    # a fresh batch norm in eval mode is x / sqrt(1 + eps): the network computes what it did
    assert torch.allclose(fixed.eval()(x), before * (1 + 1e-5) ** -1.0, rtol=1e-4, atol=1e-6)


def test_batch_norm_surgery_uses_batchnorm2d_after_a_conv_and_skips_layers_outside_a_sequential():
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 3))
    _, fixed = apply_fix("batch_norm", spec(), conv)
    assert [type(m) for m in fixed.children()][:2] == [nn.Conv2d, nn.BatchNorm2d]
    assert fixed(torch.randn(2, 1, 4, 4)).shape == (2, 3)

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    with pytest.raises(NotApplicable, match="custom forward"):
        apply_fix("batch_norm", spec(), Custom())
    with pytest.raises(NotApplicable, match="no hidden relu"):
        apply_fix("act_leaky_relu", spec(), Custom())
    apply_fix("reinit", spec(), Custom())  # torch.relu in forward(): the init that fits relu (tested below)


class FunctionalNet(nn.Module):
    """Layers called from forward() with the activation applied as a function, as many user modules do."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(400, 300), nn.Linear(300, 300), nn.Linear(300, 200)


class ReluNet(FunctionalNet):
    def forward(self, x):
        return self.out(torch.relu(self.b(torch.relu(self.a(x)))))


class ReluTanhNet(FunctionalNet):
    def forward(self, x):
        return self.out(torch.relu(self.b(torch.tanh(self.a(x)))))


class ReluGeluNet(FunctionalNet):
    def forward(self, x):
        return self.out(nn.functional.gelu(self.b(torch.relu(self.a(x)))))


class ClampNet(FunctionalNet):
    def forward(self, x):
        return self.out(self.b(self.a(x).clamp(-1, 1)))


class NoLayers(nn.Module):
    """An activation function but no Linear/Conv: nothing for a re-initialization to change."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return torch.relu(x * self.scale)


class LinearNet(FunctionalNet):
    def forward(self, x):
        return self.out(self.b(self.a(x)))


def test_module_reinit_reads_an_activation_called_as_a_function_in_forward():
    net = ReluNet()
    for p in net.parameters():
        nn.init.zeros_(p)  # every weight zero: the symmetry reinit breaks
    _, fixed = apply_fix("reinit", spec(), net, seed=1)
    for layer in (fixed.a, fixed.b):  # He et al. 2015 for relu: std = sqrt(2 / fan_in)
        assert float(layer.weight.detach().std()) == pytest.approx(math.sqrt(2 / layer.in_features), rel=0.02)
        assert torch.count_nonzero(layer.bias) == 0
    bound = math.sqrt(6 / (300 + 200))  # the output layer: Glorot & Bengio's normalized init (no activation)
    w = fixed.out.weight.detach()
    assert float(w.abs().max()) <= bound and float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert all(torch.count_nonzero(p) == 0 for p in net.parameters())  # the original is left alone
    with pytest.raises(NotApplicable, match=r"different inits as functions in forward\(\) \(relu, tanh\)"):
        apply_fix("reinit", spec(), ReluTanhNet())
    # relu and gelu call for the same init (He et al. 2015): that one
    _, mixed = apply_fix("reinit", spec(), ReluGeluNet(), seed=1)
    assert float(mixed.a.weight.detach().std()) == pytest.approx(math.sqrt(2 / 400), rel=0.02)
    # no non-linearity at all: the init of no activation (Glorot & Bengio's normalized init) on every layer
    _, linear = apply_fix("reinit", spec(), LinearNet(), seed=1)
    assert float(linear.a.weight.detach().abs().max()) <= math.sqrt(6 / (400 + 300))
    assert float(linear.a.weight.detach().std()) == pytest.approx(math.sqrt(6 / 700) / math.sqrt(3), rel=0.02)
    with pytest.raises(NotApplicable, match="no activation modules, nor an activation function"):
        apply_fix("reinit", spec(), ClampNet())  # clamp: a non-linearity deepscope cannot name
    with pytest.raises(NotApplicable, match="no Linear/Conv layer to re-initialize"):
        apply_fix("reinit", spec(), NoLayers())


def test_module_reinit_follows_he_for_relu_layers_and_glorot_for_the_output_with_zero_biases():
    net = mlp_sequential(nn.ReLU, (400, 300, 300, 200))
    for layer in net:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=1.0)
            nn.init.constant_(layer.bias, -10.0)
    _, fixed = apply_fix("reinit", spec(), net, seed=3)
    hidden1, hidden2, output = [m for m in fixed if isinstance(m, nn.Linear)]
    for layer in (hidden1, hidden2):  # He et al. 2015: std = sqrt(2 / fan_in)
        w = layer.weight.detach()
        assert float(w.std()) == pytest.approx(math.sqrt(2 / layer.in_features), rel=0.02)
        assert float(w.mean()) == pytest.approx(0.0, abs=0.01 * math.sqrt(2 / layer.in_features))
        assert torch.count_nonzero(layer.bias) == 0
    bound = math.sqrt(6 / (300 + 200))  # Glorot & Bengio 2010, eq. 16, for the output layer (no activation)
    w = output.weight.detach()
    assert float(w.abs().max()) <= bound and float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.02)
    again = apply_fix("reinit", spec(), net, seed=3)[1]
    assert all(torch.equal(a, b) for a, b in zip(fixed.parameters(), again.parameters(), strict=True))


def test_module_activation_swap_replaces_every_module_and_reinitializes_for_the_new_one():
    net = mlp_sequential(nn.Sigmoid, (200, 300, 300, 4))
    _, fixed = apply_fix("act_tanh", spec(), net)
    assert not any(isinstance(m, nn.Sigmoid) for m in fixed.modules())
    assert sum(isinstance(m, nn.Tanh) for m in fixed.modules()) == 2
    w = fixed[1].weight.detach()
    assert float(w.abs().max()) <= math.sqrt(6 / (200 + 300))  # glorot_uniform, tanh's pairing
    _, leaky = apply_fix("act_leaky_relu", spec(), mlp_sequential(nn.ReLU))
    assert sum(isinstance(m, nn.LeakyReLU) for m in leaky.modules()) == 2
    _, prelu = apply_fix("act_prelu", spec(), mlp_sequential(nn.ReLU))
    assert sum(isinstance(m, nn.PReLU) for m in prelu.modules()) == 2


def test_activation_swap_reaches_a_shared_instance_everywhere_and_leaves_the_output_squashing_alone():
    act = nn.ReLU()
    shared = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), act, nn.Linear(8, 8), act, nn.Linear(8, 4))
    _, fixed = apply_fix("act_prelu", spec(), shared)
    swapped = [m for m in fixed if isinstance(m, nn.PReLU)]
    assert len(swapped) == 2 and swapped[0] is swapped[1]  # one instance before, one after
    assert not any(isinstance(m, nn.ReLU) for m in fixed.modules())
    squashed = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Sigmoid(), nn.Linear(8, 4), nn.Sigmoid())
    _, tanh = apply_fix("act_tanh", spec(), squashed)
    assert [type(m) for m in tanh][2:] == [nn.Tanh, nn.Linear, nn.Sigmoid]  # the output's sigmoid stays
    only_out = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4), nn.Sigmoid())
    with pytest.raises(NotApplicable, match="no hidden sigmoid"):
        apply_fix("act_tanh", spec(), only_out)


def test_batch_norm_surgery_refuses_a_forward_that_indexes_the_sequential():
    class Indexed(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))

        def forward(self, x):
            return self.net[2](self.net[1](self.net[0](x.flatten(1))))

    with pytest.raises(NotApplicable, match=r"Indexed.forward\(\) indexes its nn.Sequential 'net'"):
        apply_fix("batch_norm", spec(), Indexed())


def test_unfreeze_makes_every_parameter_train_without_changing_it():
    net = mlp_sequential()
    for p in net[1].parameters():
        p.requires_grad_(False)
    _, fixed = apply_fix("unfreeze", spec(), net)
    assert all(p.requires_grad for p in fixed.parameters())
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), fixed.parameters(), strict=True))
    assert not net[1].weight.requires_grad  # the original is left as it was
    with pytest.raises(NotApplicable, match="already trains"):
        apply_fix("unfreeze", spec(), fixed)


class Unregistered(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = [nn.Linear(4, 4), nn.Linear(4, 4)]
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        for layer in self.hidden:
            x = torch.tanh(layer(x))
        return self.out(x)


def test_register_turns_a_python_list_of_layers_into_a_module_list_computing_the_same():
    net = Unregistered()
    x = torch.randn(5, 4)
    _, fixed = apply_fix("register", spec(), net)
    assert isinstance(fixed.hidden, nn.ModuleList) and len(list(fixed.parameters())) == 6
    assert len(list(net.parameters())) == 2 and torch.equal(fixed(x), net(x))
    with pytest.raises(NotApplicable, match="Python list"):
        apply_fix("register", spec(), fixed)


def test_bn_momentum_and_train_mode_fixes():
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, momentum=0.0), nn.Linear(4, 2))
    _, fixed = apply_fix("bn_momentum", spec(), net)
    assert fixed[1].momentum == 0.1 and net[1].momentum == 0.0

    class StaysEval(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))

        def forward(self, x):
            return self.net(x)

        def train(self, mode=True):
            return super().train(False)

    _, wrapped = apply_fix("train_mode", spec(), StaysEval())
    assert isinstance(wrapped, TrainMode)
    assert all(m.training for m in wrapped.train().modules()) and not any(m.training for m in wrapped.eval().modules())
    with pytest.raises(NotApplicable, match="overrides train"):
        apply_fix("train_mode", spec(), net)


@pytest.mark.parametrize("squash", [lambda z: torch.softmax(z, 1), torch.sigmoid, torch.tanh])
def test_as_logits_gives_cross_entropy_the_loss_of_the_unsquashed_logits(squash):
    torch.manual_seed(0)
    z, y = torch.randn(8, 3), torch.randint(0, 3, (8,))

    class Squashed(nn.Module):
        def forward(self, x):
            return squash(x)

    _, fixed = apply_fix("as_logits", spec(), Squashed())
    assert isinstance(fixed, AsLogits)
    if squash is torch.sigmoid or squash is torch.tanh:
        assert torch.allclose(fixed(z), z, atol=1e-4)  # logit(sigmoid(z)) = atanh(tanh(z)) = z
    else:  # log-softmax(log softmax(z)) = log softmax(z): the loss of the logits themselves
        loss = nn.functional.cross_entropy
        assert torch.allclose(loss(fixed(z), y), loss(z, y), atol=1e-6)


def test_dropout_weight_decay_and_early_stopping_fixes():
    before = spec()
    assert changed(before, apply_fix("early_stopping", before)[0]) == {
        "train.patience": (None, 2), "train.monitor": ("error", "loss"), "train.restore_best": (False, True)}
    # a run that already stops early keeps its patience and gets the loss watched and the best weights kept
    assert changed(spec(train={"patience": 5}), apply_fix("early_stopping", spec(train={"patience": 5}))[0]) == {
        "train.monitor": ("error", "loss"), "train.restore_best": (False, True)}
    with pytest.raises(NotApplicable, match="already ends with the weights of its best validation loss"):
        apply_fix("early_stopping", spec(train={"patience": 5, "monitor": "loss", "restore_best": True}))
    assert changed(before, apply_fix("dropout", before)[0]) == {"model.dropout": (0.0, 0.3)}
    assert apply_fix("weight_decay", before)[0]["optim"]["weight_decay"] == 5e-4
    assert apply_fix("strong_weight_decay", before)[0]["optim"]["weight_decay"] == 5e-3
    validate_spec(apply_fix("weight_decay", before)[0])
    # a run that decays less gets the stronger decay; one that decays as much is left alone
    assert apply_fix("strong_weight_decay", spec(optim={"weight_decay": 5e-4}))[0]["optim"]["weight_decay"] == 5e-3
    with pytest.raises(NotApplicable, match="already decays weights as much"):
        apply_fix("weight_decay", spec(optim={"weight_decay": 5e-4}))
    # AdamW decays by 0.01 unless told otherwise (Loshchilov & Hutter 2019): neither fix would decay more
    for name in ("weight_decay", "strong_weight_decay"):
        with pytest.raises(NotApplicable, match=r"weight_decay=0.01\)"):
            apply_fix(name, spec(optim={"name": "adamw", "lr": 1e-3}))


def test_run_level_fixes_on_a_module_change_the_spec_and_share_the_module():
    net = mlp_sequential()
    after, same = apply_fix("lr_x0.1", spec(), net)
    assert same is net and after["optim"]["lr"] == pytest.approx(0.005)
    with pytest.raises(NotApplicable, match="no module-level version"):
        apply_fix("lsuv", spec(), net)
