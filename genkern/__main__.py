from genkern.cli import main

raise SystemExit(main())
