"""``python -m sfu``: the same as the ``sfu`` command."""

from sfu.cli import main

raise SystemExit(main())
