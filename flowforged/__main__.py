from flowforged.cli import main

raise SystemExit(main())
