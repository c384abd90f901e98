"""The plugin system: the hook contract (`hookspecs`), the definitions plugins register and the
registry of names (`registry`), what event hooks receive (`events`), finding and loading plugins
(`system`, `loader`, `files`), ops as layers (`oplayers`), what each op supports (`opsupport`),
PyTorch OpInfo entries as ops (`opinfo`), and
knightctl's own components (`builtin`), registered through the same hooks.
"""

from knightctl._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "ComponentDef": "registry",
        "DatasetDef": "registry",
        "LIBRARY_FORMS": "opsupport",
        "LayerDef": "registry",
        "LossDef": "registry",
        "MetricDef": "metricdef",
        "Observer": "events",
        "OpDef": "registry",
        "OpLayer": "oplayers",
        "OpSummary": "opsupport",
        "OptimizerDef": "registry",
        "Params": "registry",
        "PluginEvents": "system",
        "PluginInfo": "system",
        "PluginSettings": "system",
        "PluginSystem": "system",
        "Registry": "registry",
        "RunInfo": "events",
        "RunResult": "events",
        "Sample": "sample",
        "SchedulerDef": "registry",
        "TargetKind": "registry",
        "file_digest": "files",
        "from_opinfo": "opinfo",
        "form_of": "opsupport",
        "hookimpl": "hookspecs",
        "import_plugin_file": "files",
        "load": "system",
        "summarise_ops": "opsupport",
    },
)
