"""``ckd list``: the models, methods, datasets and shipped configs there are.

The zoo's parameter counts are a table (:data:`ZOO_PARAMETERS`, checked against the built
models by the tests), so ``ckd list models`` neither builds every model nor imports torch;
``ckd list configs`` reads the package's folder (:mod:`ckd.config_files`); the methods and datasets
sections import their registries, and with them torch.
"""

from __future__ import annotations

#: Parameters of each zoo model built for 100 classes and 3 input channels,
#: ``count_parameters(create_model(name, 100))`` (``tests/test_cli_usability.py`` checks every entry
#: and that every zoo model has one; regenerate with ``python -m ckd.listing``).
ZOO_PARAMETERS: dict[str, int] = {
    "MobileNetV1": 3309476,
    "MobileNetV2": 812836,
    "ResNet18": 11220132,
    "ResNet50": 23705252,
    "ShuffleV1": 949258,
    "ShuffleV2": 1355528,
    "resnet110": 1736564,
    "resnet14": 181108,
    "resnet20": 278324,
    "resnet32": 472756,
    "resnet32x4": 7433860,
    "resnet44": 667188,
    "resnet56": 861620,
    "resnet8": 83892,
    "resnet8x4": 1233540,
    "vgg11": 9277284,
    "vgg13": 9462180,
    "vgg16": 14774436,
    "vgg19": 20086692,
    "vgg8": 3965028,
    "wrn_16_1": 180916,
    "wrn_16_2": 703284,
    "wrn_16_4": 2772020,
    "wrn_28_2": 1479220,
    "wrn_28_4": 5872180,
    "wrn_40_1": 569780,
    "wrn_40_2": 2255156,
}

#: What ``ckd list`` can show.
SECTIONS = ("all", "models", "methods", "datasets", "configs")


def list_lines(what: str = "all") -> list[str]:
    """The lines of ``ckd list [what]``."""
    lines: list[str] = []
    if what in ("all", "models"):
        lines.append("models (parameters for 100 classes):")
        lines += [f"  {name:<12} {n:>12,}" for name, n in ZOO_PARAMETERS.items()]
        lines += [
            "  and any torchvision classification model as tv:<name> (e.g. tv:resnet18,",
            "  tv:mobilenet_v3_small) or timm model as timm:<name> (e.g.",
            "  timm:deit_tiny_patch16_224; pip install 'ckd-distill[timm]')",
        ]
    if what in ("all", "methods"):
        from ckd.methods import METHODS

        lines.append("methods (tasks they serve):")
        for name, cls in METHODS.items():
            lines.append(f"  {name:<10} {cls.description}  [{cls.paper}]  ({', '.join(cls.tasks)})")
    if what in ("all", "datasets"):
        from ckd.data import DATASETS

        lines.append("datasets:")
        lines += [f"  {name}" for name in DATASETS]
    if what in ("all", "configs"):
        from ckd.config_files import shipped_configs

        lines.append("configs (ckd train NAME):")
        lines += [f"  {name}" for name in shipped_configs() + shipped_configs("detection")]
    return lines


if __name__ == "__main__":  # print the table of zoo parameter counts, computed
    from ckd.models import MODELS, count_parameters, create_model

    for _name in MODELS:
        print(f'    "{_name}": {count_parameters(create_model(_name, 100))},')
