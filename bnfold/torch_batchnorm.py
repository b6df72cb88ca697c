"""The BatchNorm modules of a PyTorch model: found, told apart when they still hold a fresh module's statistics
(whose fold is nearly the identity, so a comparison of it proves little), and randomized in a copy for export.
torch is passed in by the caller (bnfold.exporting), never imported here."""

from __future__ import annotations


def batchnorm_modules(module, torch) -> list:
    return [layer for layer in module.modules() if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm)]


def has_initial_statistics(batchnorm) -> bool:
    """Running mean all 0 and running variance all 1: what a BatchNorm holds before it has seen any data."""
    mean, var = batchnorm.running_mean, batchnorm.running_var
    return mean is not None and var is not None and bool((mean == 0).all()) and bool((var == 1).all())


def randomized_batchnorm(module, seed: int, torch):
    """A deep copy of `module` whose BatchNorms have seeded random statistics (mean ~ N(0, 0.5^2), var in
    [0.5, 2]) and affine parameters (weight in [0.5, 1.5], bias ~ N(0, 0.5^2)): a fold of them changes every
    weight, so a wrong fold or a wrong export shows in the comparison."""
    import copy

    from .options import as_seed

    generator = torch.Generator().manual_seed(as_seed(seed, "randomize_seed"))
    module = copy.deepcopy(module)

    def uniform(like, low: float, high: float):
        return torch.rand(like.shape, generator=generator) * (high - low) + low

    with torch.no_grad():
        for layer in batchnorm_modules(module, torch):
            if layer.running_mean is not None:
                layer.running_mean.copy_(torch.randn(layer.running_mean.shape, generator=generator) * 0.5)
            if layer.running_var is not None:
                layer.running_var.copy_(uniform(layer.running_var, 0.5, 2.0))
            if layer.weight is not None:
                layer.weight.copy_(uniform(layer.weight, 0.5, 1.5))
            if layer.bias is not None:
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * 0.5)
    return module
