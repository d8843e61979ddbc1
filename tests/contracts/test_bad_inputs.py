"""Bad input of every kind: exit status 2, one line naming the key or the file, no traceback, nothing created."""

import os
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_spec import tiny_spec
from typer.testing import CliRunner

from deepscope.cli import app
from deepscope.store import Store

runner = CliRunner()

SPEC = tiny_spec(30)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store with one finished 30-update run, ``tiny-1``, and its spec file."""
    root = tmp_path_factory.mktemp("trained")
    (root / "tiny.toml").write_text(SPEC)
    result = runner.invoke(app, ["train", str(root / "tiny.toml"), "--store", str(root / "store"), "-q"])
    assert result.exit_code == 0, result.output
    return root


def _one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and "weights_only=False" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _files(path: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()} if path.exists() else {}


# --- specs and flags: rejected before any store or run exists -------------------------------------------------------

SPEC_CASES = [
    (["--set", "init.scheme=normal", "--set", "init.std=abc"], "init.std='abc'"),
    (["--set", "schedule.name=step", "--set", "schedule.step_size=0"], "schedule.step_size=0"),
    (["--set", "train.batch_size=1000000000000"], "train.batch_size=1000000000000"),
    (["--set", "model.width=1000000000000"], "model.depth=2 x model.width=1000000000000: one example needs about"),
    (["--set", "optim.lr=inf"], "optim.lr=inf"),
    (["--set", "model.width=true"], "model.width=True: a boolean is not allowed here"),
    (["--set", "train.updates=false"], "train.updates=False: a boolean is not allowed here"),
    (["--set", "optim.momentum=-1"], "optim.momentum=-1"),
    (["--set", "optim.name=adam", "--set", "optim.betas=[1.5, 0.9]"], "optim.betas=[1.5, 0.9]"),
    (["--set", "model.activation=elu", "--set", 'model.activation_kwargs={alpha="x"}'],
     "model.activation_kwargs.alpha='x'"),
    (["--set", "model.activation=relu", "--set", "model.activation_kwargs={slope=1}"], "model.activation_kwargs"),
    (["--set", "data.augment=rotate", "--set", "data.augment_options.degrees=abc"], "data.augment_options.degrees"),
    (["--set", "model.width=-4"], "model.width=-4"),
    (["--set", "name=a/b"], "name='a/b'"),
    (["--set", "name=" + "n" * 300], "at most 100 characters"),
    (["--updates", "0"], "--updates=0"),
    (["--force"], "--force goes with --resume"),
    (["--probe-every", "0"], "--probe-every"),
]


@pytest.mark.parametrize("args, needle", SPEC_CASES, ids=[" ".join(a)[:40] for a, _ in SPEC_CASES])
def test_bad_spec_values_exit_2_before_a_store_is_created(tmp_path, args, needle):
    (tmp_path / "tiny.toml").write_text(SPEC)
    store = tmp_path / "store"
    result = runner.invoke(app, ["train", str(tmp_path / "tiny.toml"), *args, "--store", str(store), "-q"])
    _one_line_error(result, needle)
    assert not store.exists()  # no deepscope.db, no run directory


@pytest.mark.parametrize("content, needle", [
    (b"name = 'caf\xe9'\n", "bad.toml: the spec file is not UTF-8"),
    (b"[train\n", "bad.toml: invalid TOML"),
    (None, "bad.toml: cannot read the spec file"),
])
def test_unreadable_spec_files_are_named(tmp_path, content, needle):
    if content is not None:
        (tmp_path / "bad.toml").write_bytes(content)
    result = runner.invoke(app, ["train", str(tmp_path / "bad.toml"), "--store", str(tmp_path / "store")])
    _one_line_error(result, needle)
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("args, needle", [
    (["data", "show", "shapeset", "-n", "0"], "-n 0"),
    (["data", "show", "shapeset", "-o", "nodir/x.png"], "-o nodir/x.png"),
    (["data", "show", "shapeset", "-o", "g.txt"], "-o g.txt: .txt is not an image format"),
    (["data", "show", "shapeset", "-n", "100000"], "-n 100000: give the number of examples to draw, an integer in"),
    (["doctor", "--model", "os:system"], "--model 'os:system': system cannot be called without arguments"),
    (["doctor", "--model", "os:getcwd"], "--model 'os:getcwd': the factory returned str"),
    (["doctor", "--model", "m:f", "--updates", "0"], "--updates=0"),
    (["doctor", "--model", "m:f", "--budget", "3"], "--budget goes with --fix"),
    (["doctor", "--model", "m:f", "--backend", "ray"], "--backend goes with --fix"),
    (["doctor", "--model", "m:f", "--jobs", "2"], "--jobs goes with --fix"),
    (["report", "x", "-o", "nodir/r.html"], "-o nodir/r.html"),
    (["experiments", "run", "sigmoid-saturation", "-p", "tiny", "--set", "width=-4"], "width=-4"),
    (["experiments", "run", "sigmoid-saturation", "-p", "tiny", "--set", "updates=0"], "updates=0"),
])
def test_bad_flags_name_the_flag(tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [*args, "--store", str(tmp_path / "store")] if args[0] != "data" else args)
    _one_line_error(result, needle)
    assert sorted(os.listdir(tmp_path)) == []  # no store, no figure, no image


BAD_NETS = """\
import threading
import torch
from torch import nn


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(256, 9)

    def forward(self, x):
        z = self.fc(x.flatten(1))
        return z, z.argmax(1)


class Locked(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.lock = nn.Linear(256, 9), threading.Lock()

    def forward(self, x):
        return self.fc(x.flatten(1))


def tuple_out():
    return TupleOut()


def wrong_input():  # made for 32 x 32 images; the spec's are 16 x 16
    return nn.Sequential(nn.Flatten(), nn.Linear(1024, 9))


def four_classes():
    return nn.Sequential(nn.Flatten(), nn.Linear(256, 4))


def locked():
    return Locked()


def good():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(256, 9))
"""


@pytest.mark.parametrize("command, factory, needle", [
    ("train", "tuple_out", "model: forward() returns a tuple; deepscope needs a tensor of logits of shape (N, 9)"),
    ("doctor", "tuple_out", "model: forward() returns a tuple"),
    ("train", "wrong_input", "model: forward() fails on 2 examples of shape (1, 16, 16) from the data (RuntimeError: "
                             "mat1 and mat2 shapes cannot be multiplied"),
    ("doctor", "four_classes", "model: forward() returns shape (2, 4) for 2 examples; the data has 9 classes"),
    ("doctor --fix", "locked", "model: doctor --fix trains copies of your module, and this one cannot be copied "
                               "(TypeError: cannot pickle '_thread.lock' object)"),
])
def test_a_model_of_your_own_that_does_not_fit_the_data_is_named_before_training(tmp_path, monkeypatch, command,
                                                                                  factory, needle):
    (tmp_path / "badnets.py").write_text(BAD_NETS)
    (tmp_path / "tiny.toml").write_text(SPEC)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    args = [*command.split(), "tiny.toml", "--model", f"badnets:{factory}", "--store", "store", "-q"]
    _one_line_error(runner.invoke(app, args), needle)
    assert not (tmp_path / "store").exists() or command == "doctor --fix"


def test_train_takes_a_model_of_your_own_and_its_resume_asks_for_it_again(tmp_path, monkeypatch):
    (tmp_path / "badnets.py").write_text(BAD_NETS)
    (tmp_path / "tiny.toml").write_text(SPEC)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "tiny.toml", "--model", "badnets:good", "--store", "store", "-q"])
    assert result.exit_code == 0, result.output
    run = Store(tmp_path / "store").get_run("tiny-1")
    assert run["spec"]["model"]["class"].endswith("Sequential") and run["status"] == "finished"
    # the stored weights are those of that module: a Linear(256, 9) behind a Flatten
    state = torch.load(tmp_path / "store" / "tiny-1" / "checkpoint.pt", weights_only=True)["model"]
    assert tuple(state["1.weight"].shape) == (9, 256)
    _one_line_error(runner.invoke(app, ["train", "--resume", "tiny-1", "--updates", "40", "--store", "store", "-q"]),
                    "trained a model of your own", "--model pkg.mod:factory")
    again = runner.invoke(app, ["train", "--resume", "tiny-1", "--updates", "40", "--model", "badnets:good",
                                "--store", "store", "-q"])
    assert again.exit_code == 0 and Store(tmp_path / "store").get_run("tiny-1")["last"]["valid/error"]["step"] == 40


def test_report_names_a_directory_without_event_files_and_an_output_that_is_a_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    _one_line_error(runner.invoke(app, ["report", "empty", "-o", "r.html"]), "empty: holds no TensorBoard event files")
    _one_line_error(runner.invoke(app, ["report", "x", "-o", "empty"]), "-o empty: is a directory")
    assert sorted(os.listdir(tmp_path)) == ["empty"]


def test_experiments_output_that_is_a_file_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("")
    _one_line_error(runner.invoke(app, ["experiments", "run", "lsuv", "-p", "tiny", "-o", "taken"]),
                    "-o taken: is a file")


# --- stores that fail safe ------------------------------------------------------------------------------------------


def _truncated(path: Path, trained: Path) -> None:
    src = trained / "store" / "deepscope.db"
    copy = path.parent / "copy.db"
    db = sqlite3.connect(src)
    db.execute(f"VACUUM INTO '{copy}'")
    db.close()
    data = copy.read_bytes()
    copy.unlink()
    path.write_bytes(data[: len(data) // 2])


BROKEN = {
    "random bytes": (lambda p, t: p.write_bytes(os.urandom(8192)), "is not a deepscope run store"),
    "a directory": (lambda p, t: p.mkdir(), "is a directory, not a run store file"),
    "truncated": (_truncated, "is damaged (database disk image is malformed)"),
}
COMMANDS = [["runs", "ls"], ["runs", "show", "tiny-1"], ["runs", "compare", "tiny-1", "tiny-2"],
            ["report", "tiny-1", "-o", "REPORT"], ["train", "SPEC", "-q"], ["train", "--resume", "tiny-1", "-q"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("kind", BROKEN)
def test_broken_stores_give_one_line_naming_the_file(tmp_path, trained, kind, command):
    make, needle = BROKEN[kind]
    store = tmp_path / "store"
    store.mkdir()
    make(store / "deepscope.db", trained)
    before = _files(store)
    args = [str(trained / "tiny.toml") if a == "SPEC" else str(tmp_path / "r.html") if a == "REPORT" else a
            for a in command]
    result = runner.invoke(app, [*args, "--store", str(store)])
    _one_line_error(result, f"{store / 'deepscope.db'} {needle}", "--store DIR")
    assert _files(store) == before and not (tmp_path / "r.html").exists()  # nothing written, not even a WAL file


@pytest.fixture
def read_only_store(tmp_path, trained):
    """A copy of the trained store on a read-only directory: a read-only bind mount as root, chmod otherwise."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(trained / "store", src)
    if os.geteuid() != 0:
        for p in [src, *src.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        yield src
        for p in [src, *src.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        return
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", str(src), str(ro)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount a read-only directory here")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield ro
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=True)


def test_a_read_only_store_can_be_read_and_refuses_training_in_one_line(read_only_store, trained, tmp_path):
    ls = runner.invoke(app, ["runs", "ls", "--store", str(read_only_store)])
    assert ls.exit_code == 0 and "tiny-1" in ls.output and "finished" in ls.output
    show = runner.invoke(app, ["runs", "show", "tiny-1", "--store", str(read_only_store)])
    assert show.exit_code == 0 and "tiny" in show.output
    report = runner.invoke(app, ["report", "tiny-1", "--store", str(read_only_store), "-o", str(tmp_path / "r.html")])
    assert report.exit_code == 0 and (tmp_path / "r.html").exists()
    assert Store(read_only_store, read_only=True).get_run("tiny-1")["status"] == "finished"
    for args in (["train", str(trained / "tiny.toml")], ["train", "--resume", "tiny-1", "--updates", "60"]):
        result = runner.invoke(app, [*args, "--store", str(read_only_store), "-q"])
        _one_line_error(result, f"{read_only_store / 'deepscope.db'} is read-only")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_gives_one_line_and_leaves_no_temporary_file(tmp_path, trained):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:  # in a process of its own, so that the run's owner is gone when the store is read
        result = subprocess.run([sys.executable, "-m", "deepscope.cli", "train", str(trained / "tiny.toml"),
                                 "--set", "model.width=200", "--store", str(disk), "-q"],
                                capture_output=True, text=True)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "the disk is full" in lines[0] and str(disk / "tiny-1" / "checkpoint.pt") in lines[0]
        assert not list(disk.rglob("*.tmp"))
        assert Store(disk, read_only=True).get_run("tiny-1")["status"] == "interrupted"
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


# --- checkpoints: corrupt, hostile, not of this run -----------------------------------------------------------------


class _Payload:
    """Unpickling this would create a file."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


@pytest.mark.parametrize("kind", ["random", "empty", "truncated", "wrong content", "hostile pickle", "hostile torch"])
def test_resume_from_a_bad_checkpoint_names_the_file_and_never_unpickles(tmp_path, trained, kind):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(trained / "store", store)
    path = store / "tiny-1" / "checkpoint.pt"
    good, pwned = path.read_bytes(), tmp_path / "PWNED"
    {
        "random": lambda: path.write_bytes(os.urandom(5000)),
        "empty": lambda: path.write_bytes(b""),
        "truncated": lambda: path.write_bytes(good[: len(good) // 2]),
        "wrong content": lambda: torch.save({"weights": torch.zeros(3)}, path),
        "hostile pickle": lambda: path.write_bytes(pickle.dumps(_Payload(pwned))),
        "hostile torch": lambda: torch.save({"step": 1, "spec": _Payload(pwned)}, path),
    }[kind]()
    result = runner.invoke(app, ["train", "--resume", "tiny-1", "--updates", "60", "--store", str(store), "-q"])
    _one_line_error(result, f"the checkpoint {path}")
    assert not pwned.exists()
    assert Store(store).get_run("tiny-1")["status"] == "finished"  # refused: the run is as it was


def test_resume_refuses_a_changed_network_and_a_length_already_reached(tmp_path, trained):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(trained / "store", store)
    spec_before = Store(store).get_run("tiny-1")["spec"]
    result = runner.invoke(app, ["train", "--resume", "tiny-1", "--updates", "60", "--set", "model.width=32",
                                 "--store", str(store), "-q"])
    _one_line_error(result, "model.width=32 differs from the run's 16")
    result = runner.invoke(app, ["train", "--resume", "tiny-1", "--updates", "5", "--store", str(store), "-q"])
    _one_line_error(result, "run tiny-1 has already done 30 updates", "train.updates=5")
    run = Store(store).get_run("tiny-1")
    assert run["spec"] == spec_before and run["status"] == "finished"


def test_markup_and_mathtext_in_a_run_name_are_shown_as_text(tmp_path):
    (tmp_path / "tiny.toml").write_text(SPEC)
    store = str(tmp_path / "store")
    for name in ("[red", "$x_^$"):
        result = runner.invoke(app, ["train", str(tmp_path / "tiny.toml"), "--set", f"name={name}", "--updates", "10",
                                     "--store", store])
        assert result.exit_code == 0, result.output
    show = runner.invoke(app, ["runs", "show", "red-1", "--store", store])
    assert show.exit_code == 0 and "[red" in show.output
    report = runner.invoke(app, ["report", "red-1", "x-1", "--store", store, "-o", str(tmp_path / "r.html")])
    assert report.exit_code == 0, report.output
    assert "$x_^$" in (tmp_path / "r.html").read_text()


def test_sigint_during_start_up_prints_no_traceback(tmp_path):
    import signal
    import time

    (tmp_path / "tiny.toml").write_text(SPEC)
    inherited = signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, [])

    def as_from_a_shell():  # an ignored or blocked SIGINT passes to the child through exec (a library loaded by an
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # earlier test may have left this process so): reset both
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    proc = subprocess.Popen([sys.executable, "-m", "deepscope.cli", "train", str(tmp_path / "tiny.toml"),
                             "--store", str(tmp_path / "store")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=as_from_a_shell)
    maps = Path(f"/proc/{proc.pid}/maps")
    if not maps.exists():
        proc.kill()
        pytest.skip("needs /proc to see when the process imports torch")
    while proc.poll() is None and "torch" not in maps.read_text():  # deepscope is importing torch: start-up
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert proc.returncode != 0, f"SIGINT in this process: handler {inherited[0]}, blocked {inherited[1]}"


def test_resume_of_an_unknown_run_names_it(trained):
    result = runner.invoke(app, ["train", "--resume", "nope", "--store", str(trained / "store"), "-q"])
    _one_line_error(result, "run 'nope' not found in")
