"""Built-in sinks: slack, email, webhook, log."""
