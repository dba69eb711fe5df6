"""``python -m cloudflow_nb serve module:flow``: the same as the ``cloudflow-nb`` command."""

import sys

from cloudflow_nb.cli import main

if __name__ == "__main__":  # worker processes spawned by the embedded cluster import this module too
    sys.exit(main())
