"""``python -m anytok``: the ``anytok`` command (:mod:`anytok.cli`)."""

import sys

from anytok.cli import main

sys.exit(main())
