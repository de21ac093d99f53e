"""The local model registry: MLflow's model registry on SQLite.

MLflow numbers versions itself (1, 2, ...); the procedure's version (the plan's
``model_version``) is
kept in the ``chatft-version`` tag and is what the project reports, so names and versions
read the same on both workspaces.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from workspaces.errors import InvalidRequest, ResourceNotFound
from workspaces.interface import TAG_STAGE, ModelStage, RegisteredModel
from workspaces.local import mlflow_store
from workspaces.local.state import locked
from workspaces.ownership import refuse_foreign_model

VERSION_TAG = "chatft-version"
# MLflow model-version aliases for the stages that name one version at a time.
SINGLE_STAGES = ("production", "candidate")


def _client(tracking_uri: str):
    return mlflow_store.client(tracking_uri)


def model_id(name: str, mlflow_version: str) -> str:
    """The id a deployment refers to: MLflow's ``models:/<name>/<its number>``."""
    return f"models:/{name}/{mlflow_version}"


class LocalRegistry:
    """Model versions in MLflow's registry, found by the procedure's version (a tag)."""

    def __init__(self, tracking_uri: str) -> None:
        """The registry of the MLflow store at ``tracking_uri`` (SQLite)."""
        self.tracking_uri = tracking_uri
        database = mlflow_store.database_path(tracking_uri)
        self.lock_path = database.with_name(f".{database.name}.register.lock")

    def _find(self, name: str, version: str):
        from mlflow.exceptions import MlflowException

        client = _client(self.tracking_uri)
        try:
            versions = client.search_model_versions(f"name='{name}'")
        except MlflowException:
            return None
        for candidate in versions:
            if candidate.tags.get(VERSION_TAG) == version:
                return candidate
        return None

    def _record(self, mv, version: str) -> RegisteredModel:
        tags = {k: v for k, v in mv.tags.items() if k != VERSION_TAG}
        aliases = list(getattr(mv, "aliases", None) or [])
        if aliases:
            tags["mlflow-aliases"] = ",".join(sorted(aliases))
        return RegisteredModel(
            name=mv.name,
            version=version,
            id=model_id(mv.name, mv.version),
            description=mv.description or "",
            path=tags.get("job-output", mv.source),
            tags={**tags, "mlflow-version": str(mv.version)},
            url=None,
        )

    def get(self, name: str, version: str) -> RegisteredModel | None:
        """Model ``name`` at the procedure's ``version`` (None: not registered)."""
        mv = self._find(name, version)
        return self._record(mv, version) if mv else None

    def register(
        self,
        name: str,
        version: str,
        source: str,
        run_id: str | None,
        description: str,
        tags: dict[str, str],
        owner: str | None = None,
    ) -> RegisteredModel:
        """Register the MLflow model at ``source`` as ``name`` ``version``, or return the
        version already registered when it is ``owner``'s (another request's is refused)."""
        from mlflow.exceptions import MlflowException

        # Looked up and created under one lock: two requests registering at once must not
        # both find the version missing and both create it.
        with locked(self.lock_path):
            existing = self.get(name, version)
            if existing:
                refuse_foreign_model(name, version, existing.tags, owner)
                return existing
            client = _client(self.tracking_uri)
            try:
                client.get_registered_model(name)
            except MlflowException:
                client.create_registered_model(name, description=description)
            mv = client.create_model_version(
                name=name,
                source=source,
                run_id=run_id,
                description=description,
                tags={**tags, VERSION_TAG: version},
            )
            return self._record(mv, version)

    def set_stage(
        self, name: str, version: str, stage: ModelStage, tags: dict[str, str]
    ) -> RegisteredModel:
        """Tag the version with its stage; "production" and "candidate" are also MLflow
        aliases, which name one version at a time (MLflow moves an alias, never copies it)."""
        with locked(self.lock_path):
            mv = self._find(name, version)
            if mv is None:
                raise ResourceNotFound(f"model {name} version {version} is not registered")
            client = _client(self.tracking_uri)
            for key, value in {**tags, TAG_STAGE: stage}.items():
                client.set_model_version_tag(name, mv.version, key, value)
            if stage in SINGLE_STAGES:
                client.set_registered_model_alias(name, stage, mv.version)
            held = client.get_registered_model(name).aliases or {}
            for alias in SINGLE_STAGES:
                if alias != stage and str(held.get(alias)) == str(mv.version):
                    client.delete_registered_model_alias(name, alias)
            return self._record(self._find(name, version), version)

    def local_path(self, model_id_: str) -> Path:
        """The folder of an MLflow model a deployment should load."""
        from mlflow.exceptions import MlflowException

        if not model_id_.startswith("models:/"):
            raise InvalidRequest(f"model {model_id_!r} is not a local registry id (models:/name/N)")
        name, _, number = model_id_.removeprefix("models:/").rpartition("/")
        try:
            mv = _client(self.tracking_uri).get_model_version(name, number)
        except MlflowException as exc:
            raise ResourceNotFound(f"model {model_id_} is not registered") from exc
        source = mv.source
        if source.startswith("models:/") or source.startswith("runs:/"):
            import mlflow

            return Path(mlflow.artifacts.download_artifacts(source, tracking_uri=self.tracking_uri))
        return Path(unquote(urlparse(source).path)) if source.startswith("file:") else Path(source)
