from certrenew.cli import main

raise SystemExit(main())
