from fm9g_deploy.cli import main

raise SystemExit(main())
