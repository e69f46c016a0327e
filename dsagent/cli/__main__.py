"""``python -m dsagent.cli``: the ``dsagent`` command."""

from . import main

raise SystemExit(main())
