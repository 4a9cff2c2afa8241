"""`registry` section: the MLflow registered model that holds every candidate and the aliases."""

from pydantic import Field

from tuneline.config.base import Section


class RegistryParams(Section):
    model_name: str = Field("tuneline-demo", description="Registered model name in the MLflow registry.")
    champion_alias: str = Field("champion", description="Alias of the model in service.")
    challenger_alias: str = Field("challenger", description="Alias of the newest evaluated candidate.")
    previous_alias: str = Field(
        "previous_champion", description="Alias kept on the champion a promotion replaced (for rollback)."
    )
    copy_base: bool = Field(
        False,
        description="Copy the base model's files into every registered version, for air-gapped serving. "
        "Off: a version records a reference to its base (local path + content hash, or hub id + "
        "revision), checked when the version is loaded, instead of storing GBs per version. A base inside "
        "the workspace (the demo base, a pipeline output the next experiment replaces) is always copied.",
    )
