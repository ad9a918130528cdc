"""Console entry point of ``hf-costeff``: answers ``--help`` and usage errors without importing torch.

``import hf_costeff.cli`` runs ``hf_costeff/__init__.py`` first, which imports torch and transformers (seconds) to
register the CostEff classes with the Auto classes. Here the package module is created without running its
``__init__``, the command line is parsed by ``hf_costeff.cli.build_parser`` (standard library only), and the package
is initialised only once a command is about to run.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "hf_costeff" not in sys.modules:
        spec = importlib.util.find_spec("hf_costeff")
        package = importlib.util.module_from_spec(spec)
        sys.modules["hf_costeff"] = package
        try:
            from hf_costeff.cli import build_parser

            build_parser().parse_args(argv)  # --help and usage errors exit here, in a fraction of a second
            spec.loader.exec_module(package)  # the real `import hf_costeff`
        except BaseException:
            for name in [n for n in sys.modules if n == "hf_costeff" or n.startswith("hf_costeff.")]:
                del sys.modules[name]
            raise
    from hf_costeff.cli import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
