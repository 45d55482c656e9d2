"""The cfg / YAML side of darknet: ``grammar`` (text -> Sections with typed,
range-checked readers), ``netconfig`` (the [net] options as a NetConfig) and
``builder`` (Sections -> Network, with the memory check)."""

from .builder import parse_network, parse_network_cfg
from .grammar import (
    ConfigWarning,
    Option,
    Section,
    convert_cfg,
    read_cfg_text,
    read_sections,
    read_yaml_text,
    sections_to_cfg,
    sections_to_yaml,
)
from .netconfig import NetConfig, read_net_config

__all__ = [
    "ConfigWarning",
    "NetConfig",
    "Option",
    "Section",
    "convert_cfg",
    "parse_network",
    "parse_network_cfg",
    "read_cfg_text",
    "read_net_config",
    "read_sections",
    "read_yaml_text",
    "sections_to_cfg",
    "sections_to_yaml",
]
