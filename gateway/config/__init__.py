"""conf.d/*.toml → one frozen, validated Config.

Files are read in lexical order; tables merge, arrays of tables append, a later
scalar wins. Every error names the file, the dotted key and the reason, and all
errors are collected before giving up, so `deskgate check` shows them at once.

Sections are plain frozen dataclasses (gateway.config.sections); the loader
(gateway.config.load) converts a TOML table into one by looking at the field
types, so adding a key is adding a field. The value converters are
gateway.config.values, the checks across sections gateway.config.validate, the
throughput advice of `check` gateway.config.advice.
"""

from __future__ import annotations

from gateway.config.advice import process_advice, usable_cpus
from gateway.config.load import default_config_dir, load_config
from gateway.config.sections import (
    HELPDESK_TYPES,
    AccountConfig,
    AddressConfig,
    ClassifierConfig,
    Condition,
    Config,
    CryptoConfig,
    DashboardConfig,
    DashboardUser,
    DkimConfig,
    FilterConfig,
    GatewayConfig,
    HelpdeskConfig,
    LmtpConfig,
    OAuth2Config,
    PostmasterConfig,
    QueueConfig,
    RelayConfig,
    StoreConfig,
    SubmissionConfig,
    SubmissionUser,
)
from gateway.config.values import (
    Secret,
    conv,
    each_string,
    parse_duration,
    parse_email,
    parse_listen,
    parse_mode,
    parse_network,
    parse_schedule,
    parse_size,
    secret,
    split_listen,
)
from gateway.errors import ConfigError, ConfigErrors

__all__ = [
    "HELPDESK_TYPES", "AccountConfig", "AddressConfig", "ClassifierConfig", "Condition",
    "Config", "ConfigError", "ConfigErrors", "CryptoConfig", "DashboardConfig",
    "DashboardUser", "DkimConfig", "FilterConfig", "GatewayConfig", "HelpdeskConfig",
    "LmtpConfig", "OAuth2Config", "PostmasterConfig", "QueueConfig", "RelayConfig",
    "Secret", "StoreConfig", "SubmissionConfig", "SubmissionUser", "conv",
    "default_config_dir", "each_string", "load_config", "parse_duration", "parse_email",
    "parse_listen", "parse_mode", "parse_network", "parse_schedule", "parse_size",
    "process_advice", "secret", "split_listen", "usable_cpus",
]
