"""Config layer: presets (YAML, with provenance) -> validated config objects."""

from groklab.config.loading import (
    PRESET_DIR,
    apply_overrides,
    config_from_dict,
    format_validation_error,
    load_config,
    load_preset,
    preset_names,
    to_yaml,
)
from groklab.config.plugins import PluginError, load_plugins
from groklab.config.schema import (
    WEIGHT_STATISTICS,
    EarlyStop,
    MeasuresConfig,
    ModelConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
)

__all__ = [
    "PRESET_DIR",
    "WEIGHT_STATISTICS",
    "EarlyStop",
    "MeasuresConfig",
    "ModelConfig",
    "PluginError",
    "RunConfig",
    "TaskConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "format_validation_error",
    "load_config",
    "load_plugins",
    "load_preset",
    "preset_names",
    "to_yaml",
]
