"""Small-input architectures, registered in timm's registry so that `timm.create_model(name)` builds them.

Every model in the study is made by `timm.create_model`; besides the ones below, any timm architecture
name works (it gets `num_classes` and `in_chans`), and so does a user's own, registered in the file that the
`model_module` key names.
"""

from __future__ import annotations

import inspect

import timm
import torch.nn as nn
from timm.models import register_model

from ..config import Config, ConfigError

__all__ = ["MEMLIB_ARCHS", "build_model", "check_arch"]


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


@register_model
def mem_mlp(
    pretrained: bool = False, num_classes: int = 10, in_chans: int = 1, img_size: int = 8, width: int = 256, **_
) -> nn.Module:
    """Two hidden ReLU layers of `width` units on flattened pixels (the authors' MNIST demo uses 512-256)."""
    d_in = in_chans * img_size * img_size
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(d_in, width),
        nn.ReLU(inplace=True),
        nn.Linear(width, width),
        nn.ReLU(inplace=True),
        nn.Linear(width, num_classes),
    )


@register_model
def mem_mlp_mnist(pretrained: bool = False, num_classes: int = 10, in_chans: int = 1, img_size: int = 28, **_):
    """The released MNIST demo's MLP: 784-512-256-10."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_chans * img_size * img_size, 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, num_classes),
    )


@register_model
def mem_cnn(pretrained: bool = False, num_classes: int = 10, in_chans: int = 1, width: int = 32, **_) -> nn.Module:
    """Three 3x3 conv-BN-ReLU blocks, downsampling by stride (faster on CPU than max-pooling: benchmarks/README.md)."""
    w = width
    return nn.Sequential(
        _conv_bn(in_chans, w),
        _conv_bn(w, 2 * w, stride=2),
        _conv_bn(2 * w, 4 * w, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * w, num_classes),
    )


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.skip = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        return (self.body(x) + self.skip(x)).relu_()


@register_model
def mem_resnet18(pretrained: bool = False, num_classes: int = 10, in_chans: int = 3, width: int = 64, **_):
    """ResNet-18 for 32x32 inputs: a 3x3 stem without max-pooling, four stages of two basic blocks."""
    w = width
    layers: list[nn.Module] = [_conv_bn(in_chans, w)]
    c_in = w
    for stage, c_out in enumerate((w, 2 * w, 4 * w, 8 * w)):
        for block in range(2):
            layers.append(_BasicBlock(c_in, c_out, stride=2 if stage > 0 and block == 0 else 1))
            c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


MEMLIB_ARCHS = ("mem_mlp", "mem_mlp_mnist", "mem_cnn", "mem_resnet18")


def import_model_module(model_module: str | None) -> None:
    """Import a user's Python file (once per process) so that its @register_model functions join timm's registry."""
    if model_module:
        from ..data.own import import_user_module

        import_user_module(model_module, f"model_module: {model_module}")


def check_arch(name: str, model_module: str | None = None) -> None:
    """Raise ConfigError unless timm can build `name` (after importing `model_module`, if given)."""
    import_model_module(model_module)
    if not timm.is_model(name):
        where = f" (and {model_module} registers no such name)" if model_module else ""
        raise ConfigError(
            f"unknown architecture {name!r}: timm has no such model{where}. memlib registers "
            f"{', '.join(MEMLIB_ARCHS)}; any other `timm.list_models()` name also works, and so does your own "
            "function decorated with @timm.models.register_model in a file named by model_module."
        )


def model_kwargs(cfg: Config, img_size: int) -> dict:
    """Keyword arguments for the architecture's timm entry point: img_size and width where it names them.

    `width` is passed to every architecture whose entry function has a `width` parameter (memlib's and yours);
    for any other, a width other than null is an error rather than silently ignored.
    """
    params = inspect.signature(timm.models.model_entrypoint(cfg.arch)).parameters
    kwargs: dict = {}
    if "img_size" in params:
        kwargs["img_size"] = img_size
    if "width" in params:
        if cfg.width is not None:
            kwargs["width"] = cfg.width
    elif cfg.width is not None:
        raise ConfigError(
            f"arch {cfg.arch!r} takes no width parameter, so width: {cfg.width} would be ignored. Set width: null "
            "in the profile (or give your architecture a `width` argument)."
        )
    return kwargs


def build_model(cfg: Config, in_chans: int, img_size: int, num_classes: int) -> nn.Module:
    """`timm.create_model(cfg.arch, ...)` with num_classes, in_chans, and img_size and width where it takes them."""
    check_arch(cfg.arch, cfg.model_module)
    kwargs = dict(num_classes=num_classes, in_chans=in_chans, **model_kwargs(cfg, img_size))
    return timm.create_model(cfg.arch, pretrained=False, **kwargs)
