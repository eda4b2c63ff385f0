"""Configuration: the schema, what the environment adds, and the one verdict on both."""

from monitor.settings.environment import CONFIG_ENV as CONFIG_ENV
from monitor.settings.environment import shard_index_from_env as shard_index_from_env
from monitor.settings.schema import DEFAULT_PORT as DEFAULT_PORT
from monitor.settings.schema import ApiSettings as ApiSettings
from monitor.settings.schema import CoordinationSettings as CoordinationSettings
from monitor.settings.schema import DiscoverySettings as DiscoverySettings
from monitor.settings.schema import ServerSettings as ServerSettings
from monitor.settings.schema import Settings as Settings
from monitor.settings.schema import ShardingSettings as ShardingSettings
from monitor.settings.verdict import ConfigError as ConfigError
from monitor.settings.verdict import check_kubernetes as check_kubernetes
from monitor.settings.verdict import kubernetes_api as kubernetes_api
from monitor.settings.verdict import load_settings as load_settings
from monitor.settings.verdict import parse_settings as parse_settings
from monitor.settings.verdict import summary as summary
