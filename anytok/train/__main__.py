"""``python -m anytok.train RECIPE ...`` (train) or ``python -m anytok.train export ...``.

Also the module torchrun starts: ``torchrun --nproc_per_node 2 -m anytok.train RECIPE ...``.
"""

import sys

from anytok.train.cli import export_from_cli, run_from_cli

if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "export":
        sys.exit(export_from_cli(args[1:]))
    sys.exit(run_from_cli(args[1:] if args and args[0] == "train" else args))
