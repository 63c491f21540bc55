"""torch: a seconds-resolution cron daemon driven by one version-controlled task file."""

__version__ = "0.1.0"
