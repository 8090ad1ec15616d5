"""Settings: defaults < environment variables < `migrate.toml` < command-line flags."""

from __future__ import annotations

import functools
import os
import ssl
import tomllib
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from migrate.errors import ConfigError

ENV_VARS = {
    "pipedrive_api_token": "PIPEDRIVE_API_TOKEN",
    "pipedrive_base_url": "PIPEDRIVE_BASE_URL",
    "customermates_url": "CUSTOMERMATES_URL",
    "customermates_api_key": "CUSTOMERMATES_API_KEY",
    "state": "MIGRATE_STATE",
    "phone_region": "MIGRATE_PHONE_REGION",
    "ca_bundle": "MIGRATE_CA_BUNDLE",
}
SECRET_FIELDS = ("pipedrive_api_token", "customermates_api_key")
FLAGS = {  # the command-line flag of each setting, where it is not --<name>
    "pipedrive_api_token": "--pipedrive-token",
    "pipedrive_base_url": "--pipedrive-url",
    "customermates_api_key": "--customermates-key",
}


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pipedrive_api_token: str | None = None
    pipedrive_base_url: str = "https://api.pipedrive.com"
    customermates_url: str | None = None
    customermates_api_key: str | None = None
    state: Path = Path("migration.duckdb")
    source: Path | None = None
    phone_region: str | None = None
    ca_bundle: Path | None = None
    mappings: Path | None = None
    pipedrive_burst_limit: int = 20
    transform_workers: int | None = None  # None: one per core when there are many records to make

    @field_validator("pipedrive_base_url", "customermates_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https:// (got {value!r})")
        return value

    @field_validator("pipedrive_base_url")
    @classmethod
    def _pipedrive_root(cls, value: str) -> str:
        """Pipedrive's docs give the API's address with its path (https://acme.pipedrive.com/api/v1); the
        tool adds the paths itself, so a pasted API path is taken off (any other path is kept: a proxy's)."""
        for suffix in ("/api/v1", "/api/v2", "/api"):
            if value.lower().endswith(suffix):
                return value[: -len(suffix)].rstrip("/")
        return value

    @field_validator("transform_workers")
    @classmethod
    def _workers(cls, value: int | None) -> int | None:
        if value is not None and not 0 <= value <= 64:
            raise ValueError(f"must be from 0 (none: records are made in the main process) to 64 (got {value})")
        return value

    @field_validator("pipedrive_api_token", "customermates_api_key")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        """Copied tokens often carry a trailing newline or spaces: strip them; blank is unset.
        The message never repeats the value."""
        if value is None:
            return None
        value = value.strip()
        if any(ch.isspace() or not ch.isprintable() for ch in value):
            raise ValueError("contains a space or control character inside it; paste the token again")
        return value or None

    @field_validator("ca_bundle")
    @classmethod
    def _ca_bundle(cls, value: Path | None) -> Path | None:
        """Fail here, with the path in the message, rather than deep inside the first TLS connection."""
        if value is None:
            return None
        try:
            _load_context(str(value))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"{value} cannot be used as a CA bundle ({exc.strerror or exc}); give a PEM file of CA certificates") from None
        return value

    @field_validator("phone_region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value and (len(value) != 2 or not value.isalpha()):
            raise ValueError(f"must be a two-letter country code such as DE (got {value!r})")
        return value.upper() if value else None

    @property
    def verify(self) -> ssl.SSLContext:
        """The TLS context of every client: verification always on, with --ca-bundle's CAs when given."""
        return _tls_context(str(self.ca_bundle) if self.ca_bundle else None)

    def require(self, *names: str) -> None:
        missing = [n for n in names if not getattr(self, n)]
        if missing:
            hints = ", ".join(f"{ENV_VARS.get(n, n.upper())} (or {FLAGS.get(n, '--' + n.replace('_', '-'))})" for n in missing)
            raise ConfigError(f"missing setting: {hints}")

    def redacted(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        for name in SECRET_FIELDS:
            if data.get(name):
                data[name] = "***"
        return data


def _load_context(ca_bundle: str | None) -> ssl.SSLContext:
    if ca_bundle is None:
        return httpx.create_ssl_context()  # what httpx does by default (certifi, or SSL_CERT_FILE / SSL_CERT_DIR)
    if os.path.isdir(ca_bundle):
        return ssl.create_default_context(capath=ca_bundle)
    return ssl.create_default_context(cafile=ca_bundle)


@functools.lru_cache(maxsize=8)
def _tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """Built once per process: loading the CA store costs more than a small run's requests."""
    return _load_context(ca_bundle)


def load_settings(flags: dict[str, Any], config_file: Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Merge the layers; `flags` holds only what the user passed (None values are ignored)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, var in ENV_VARS.items():
        if environ.get(var):
            values[name] = environ[var]
    path = config_file or (Path("migrate.toml") if Path("migrate.toml").exists() else None)
    if path is not None:
        try:
            with open(path, "rb") as handle:
                table = tomllib.load(handle).get("migrate", {})
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except OSError as exc:  # a directory, no permission
            raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        if not isinstance(table, dict):
            raise ConfigError(
                f"config file {path}: 'migrate' must be a [migrate] table of settings (state = \"...\", ...), not {type(table).__name__}"
            )
        values.update(table)
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid settings: {problems}") from None
