"""``python -m handler_consul.cli``."""

from handler_consul.cli.main import main

raise SystemExit(main())
