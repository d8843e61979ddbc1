"""The tiny Shapeset spec the command-line tests train: a 2 x 16 MLP, evaluated every 10 updates."""


def tiny_spec(updates: int) -> str:
    """The spec as TOML text, named "tiny" (its runs are tiny-1, tiny-2, ...), ``updates`` long."""
    return f"""\
name = "tiny"
[data]
name = "shapeset"
options = {{ n_valid = 40, n_test = 40, size = 16 }}
[model]
depth = 2
width = 16
[train]
updates = {updates}
eval_every = 10
batch_size = 10
device = "cpu"
"""
