"""One module per subcommand; see fm9g_deploy/cli.py for the convention."""
