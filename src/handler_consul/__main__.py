"""``python -m handler_consul``: the handler-consul CLI."""

from handler_consul.cli.main import main

raise SystemExit(main())
