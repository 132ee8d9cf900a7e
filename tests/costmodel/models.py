"""Tiny model factories for the cost-model CLI tests (FILE:FACTORY): the zoo's MLP at two widths, so eval
has a held-out model that is not the one trained on."""

from fxforge import testing


def mlp_train():
    return testing.build("mlp")


def mlp_heldout():
    return testing.build("mlp", seed=2, hidden=128)
