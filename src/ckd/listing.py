"""``ckd list``: the models, methods, datasets and shipped configs there are.

The zoo's parameter counts are a generated file (:data:`PARAMETERS_FILE`, checked against the
built models by the tests), so ``ckd list models`` neither builds every model nor imports torch;
``ckd list configs`` reads the package's folder (:mod:`ckd.config_files`); the methods and datasets
sections import their registries, and with them torch.
"""

from __future__ import annotations

import json
from pathlib import Path

#: The file of the zoo's parameter counts, built for 100 classes and 3 input channels
#: (``count_parameters(create_model(name, 100))``), generated from the model registry by
#: ``python -m ckd.listing --write`` (``tests/test_cli_usability.py`` checks it is current).
PARAMETERS_FILE = Path(__file__).parent / "models" / "zoo" / "parameters.json"


def zoo_parameters() -> dict[str, int]:
    """Each zoo model's parameter count, read from :data:`PARAMETERS_FILE` (no torch)."""
    table: dict[str, int] = json.loads(PARAMETERS_FILE.read_text())
    return table


def computed_parameters() -> dict[str, int]:
    """What :data:`PARAMETERS_FILE` should hold: every registered zoo model, built (torch)."""
    from ckd.models import MODELS, count_parameters, create_model  # deferred: loads torch

    return {name: count_parameters(create_model(name, 100)) for name in MODELS}


#: What ``ckd list`` can show.
SECTIONS = ("all", "models", "methods", "datasets", "configs")


def list_lines(what: str = "all") -> list[str]:
    """The lines of ``ckd list [what]``."""
    lines: list[str] = []
    if what in ("all", "models"):
        lines.append("models (parameters for 100 classes):")
        lines += [f"  {name:<12} {n:>12,}" for name, n in zoo_parameters().items()]
        lines += [
            "  and any torchvision classification model as tv:<name> (e.g. tv:resnet18,",
            "  tv:mobilenet_v3_small) or timm model as timm:<name> (e.g.",
            "  timm:deit_tiny_patch16_224; pip install 'ckd-distill[timm]')",
        ]
    if what in ("all", "methods"):
        from ckd.methods import METHODS  # deferred: loads torch, which `list models` needs not

        lines.append("methods (tasks they serve):")
        for name, cls in METHODS.items():
            lines.append(f"  {name:<10} {cls.description}  [{cls.paper}]  ({', '.join(cls.tasks)})")
    if what in ("all", "datasets"):
        from ckd.data import DATASETS  # deferred: loads torch, which `list models` needs not

        lines.append("datasets:")
        lines += [f"  {name}" for name in DATASETS]
    if what in ("all", "configs"):
        from ckd.config_files import shipped_configs  # deferred: only `list configs` reads it

        lines.append("configs (ckd train NAME):")
        lines += [f"  {name}" for name in shipped_configs() + shipped_configs("detection")]
    return lines


if __name__ == "__main__":  # print the table computed from the registry; --write: into the file
    import sys

    text = json.dumps(computed_parameters(), indent=1) + "\n"
    if sys.argv[1:] == ["--write"]:
        PARAMETERS_FILE.write_text(text)
    else:
        print(text, end="")
