"""The names of the former single-module parser, for code that imports them from here.

The cfg package is split by role: ``grammar`` (text -> Sections, typed
readers), ``netconfig`` ([net] -> NetConfig), ``builder`` (Sections -> Network).
New code imports from ``minidark.cfg``.
"""

from .builder import SizeParams, parse_network, parse_network_cfg
from .grammar import (
    REQUIRED,
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
from .netconfig import POLICIES, NetConfig, read_net_config

__all__ = [
    "POLICIES",
    "REQUIRED",
    "ConfigWarning",
    "NetConfig",
    "Option",
    "Section",
    "SizeParams",
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
