"""``python -m metagrad``: the same as the ``metagrad`` command."""

import sys

from metagrad.cli import main

if __name__ == "__main__":
    sys.exit(main())
