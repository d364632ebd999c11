"""The one exception type for bad input: its message is one sentence naming the key to change."""


class ConfigError(ValueError):
    """Raised before training when a config, checkpoint or data file cannot work."""
