"""FlowForge built-in plugins, installed as `flowforged_plugins` (see pyproject.toml)."""
