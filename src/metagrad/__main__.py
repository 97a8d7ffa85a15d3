"""``python -m metagrad``: the same as the ``metagrad`` command."""

from metagrad.cli import main

raise SystemExit(main())
