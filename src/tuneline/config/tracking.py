"""`tracking` section: where MLflow records runs, metrics and (later) registered models."""

from pydantic import Field

from tuneline.config.base import Section


class TrackingParams(Section):
    uri: str = Field(
        "sqlite:///mlflow.db",
        description="MLflow tracking URI: embedded sqlite by default (nothing to start), or http://host:port.",
    )
    experiment: str = Field("tuneline", description="MLflow experiment that holds the runs.")
