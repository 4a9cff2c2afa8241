"""The one typed config: every knob of every stage, loaded from params.yaml.

Sections are named after the stages (one verb everywhere) and live one per module here.
"""

from tuneline.config.loader import Config, dump_config, load_config, parse_overrides

__all__ = ["Config", "dump_config", "load_config", "parse_overrides"]
