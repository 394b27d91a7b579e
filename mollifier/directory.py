"""What the dashboard needs to know about tenants, from the app that owns them.

The mollifier never imports that app: ``MOLLIFIER["DIRECTORY"]`` names a class by dotted path (as
``MOLLIFIER["SINK"]`` does) with three methods: ``environment_labels(env_ids) -> {env_id: label}``,
``environment_types(env_ids) -> {env_id: type}`` (production, staging, preview, development: the
drain's weights, mollifier/priority.py; ids it does not know are left out) and
``enrolled_organizations() -> [org_id]``.
"""

from collections.abc import Iterable
from functools import lru_cache
from typing import Protocol

from django.utils.module_loading import import_string

from mollifier import conf


class Directory(Protocol):
    def environment_labels(self, env_ids: Iterable[str]) -> dict[str, str]: ...

    def environment_types(self, env_ids: Iterable[str]) -> dict[str, str]: ...

    def enrolled_organizations(self) -> list[str]: ...


@lru_cache(maxsize=4)
def _load(path: str) -> Directory:
    return import_string(path)()


def get_directory() -> Directory:
    return _load(conf.directory_path())
