from krishna_ai.cli import main

raise SystemExit(main())
