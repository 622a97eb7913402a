"""fm9g-deploy: provision, deploy and verify FM9G models on a fleet of hosts."""

__version__ = "0.1.0"
