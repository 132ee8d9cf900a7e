"""Model factories for `fxforge costmodel profile | eval` (FILE:FACTORY): the zoo's HF architectures at
small sizes, with seeded random weights. Training set: mlp, llama(1), gpt2(_1); held out for eval: bert(1), mistral(1),
and the wider llama variant (`llama_wide`)."""

from fxforge import testing


def mlp():
    return testing.build("mlp")


def llama():
    return testing.build("llama")


def gpt2():
    return testing.build("gpt2")


def bert():
    return testing.build("bert")


def mistral():
    return testing.build("mistral", hidden=128, heads=4, kv_heads=1, intermediate=256)


def llama_wide():
    return testing.build("llama", hidden=128, heads=8, kv_heads=8, intermediate=384, seed=3)


# one-layer variants: the kernels of a deeper model repeat these; profiling them costs half
def llama1():
    return testing.build("llama", layers=1)


def gpt2_1():
    return testing.build("gpt2", layers=1)


def bert1():
    return testing.build("bert", layers=1)


def mistral1():
    return testing.build("mistral", layers=1, hidden=128, heads=4, kv_heads=1, intermediate=256)
