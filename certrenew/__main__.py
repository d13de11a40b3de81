from certrenew.cli.commands import main

raise SystemExit(main())
