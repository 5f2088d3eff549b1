import sys

if sys.argv[1:2] == ["coordination"]:
    from bench.coordination import main as coordination

    raise SystemExit(coordination(sys.argv[2:]))

from bench.cli import main

raise SystemExit(main())
