"""Recipes: one YAML file per image, validated by a pydantic schema.

`load_recipe("debian-12-xfce")` reads `recipes/debian-12-xfce.yaml`; a path to any YAML file works too.
Every error names the file, the field path and what is allowed (`RecipeError`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import zoneinfo
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .paths import recipes_dir

DESKTOPS = ("xfce", "gnome", "kde", "mate", "lxqt", "none")

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.I)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class RecipeError(ValueError):
    """A recipe is unusable. `str()` reads `FILE: FIELD: what is wrong (allowed: ...)`."""

    def __init__(self, file: str | os.PathLike | None, field: str, message: str):
        self.file, self.field, self.message = str(file) if file else "<recipe>", field, message
        super().__init__(f"{self.file}: {field}: {message}" if field else f"{self.file}: {message}")


def parse_size(value: str | int) -> int:
    """'8G', '512MiB', '4096' (bytes) -> bytes."""
    if isinstance(value, int):
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a size (allowed: a number with an optional unit K, M, G or T, e.g. 8G)")
    unit = (m.group(2) or "").upper().rstrip("B").rstrip("I")
    return int(float(m.group(1)) * _UNITS[unit])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class User(_Strict):
    name: str = Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$", description="POSIX user name")
    password_hash: Optional[str] = Field(None, description="crypt(3) hash, e.g. from `mkpasswd -m sha-512`")
    password_env: Optional[str] = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                        description="environment variable holding the plain password at build time")
    groups: list[str] = Field(default_factory=list)
    sudo: bool = False
    sudo_nopasswd: bool = False
    shell: str = "/bin/bash"
    uid: Optional[int] = Field(None, ge=1000, le=60000)

    @field_validator("password_hash")
    @classmethod
    def _hash(cls, v):
        if v is not None and not re.match(r"^\$(1|5|6|y|gy|2[abxy]?|7)\$[./A-Za-z0-9$=]+$", v) and v not in ("!", "*"):
            raise ValueError("is not a crypt(3) hash (allowed: a hash like $6$... or $y$... from "
                             "`mkpasswd -m sha-512`, or '!' for a locked password); plain passwords are never "
                             "written in a recipe: use password_env")
        return v

    @field_validator("groups")
    @classmethod
    def _groups(cls, v):
        for g in v:
            if not re.match(r"^[a-z_][a-z0-9_-]{0,31}$", g):
                raise ValueError(f"{g!r} is not a group name (allowed: lower-case letters, digits, _ and -)")
        return v

    @model_validator(mode="after")
    def _one_password(self):
        if self.password_hash and self.password_env:
            raise ValueError("give password_hash or password_env, not both")
        return self


class Disk(_Strict):
    size: str = "8G"
    filesystem: Literal["ext4"] = "ext4"
    partition_table: Literal["gpt"] = "gpt"
    firmware: Literal["bios", "uefi", "both"] = "both"
    esp_size: str = "200M"

    @field_validator("size", "esp_size")
    @classmethod
    def _size(cls, v):
        parse_size(v)
        return v

    @property
    def size_bytes(self) -> int:
        return parse_size(self.size)

    @property
    def esp_bytes(self) -> int:
        return parse_size(self.esp_size)

    @model_validator(mode="after")
    def _big_enough(self):
        if self.size_bytes < (1 << 30):
            raise ValueError(f"size {self.size} is too small (allowed: 1G or more)")
        if not (64 << 20) <= self.esp_bytes <= (1 << 30):
            raise ValueError(f"esp_size {self.esp_size} is out of range (allowed: 64M to 1G)")
        return self


class Output(_Strict):
    format: Literal["qcow2", "raw"] = "qcow2"
    compression: Literal["zstd", "zlib", "none"] = "zstd"

    @model_validator(mode="after")
    def _raw(self):
        if self.format == "raw" and self.compression != "none":
            raise ValueError("format raw cannot be compressed (allowed with raw: compression none)")
        return self


class Recipe(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    # distro, release and architecture are checked against the distribution modules (distros.check)
    distro: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    release: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    architecture: str = Field("amd64", pattern=r"^[a-z0-9_]+$")
    desktop: Literal[DESKTOPS] = "none"
    packages: list[str] = Field(default_factory=list)
    hostname: str = Field("localhost", pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    locale: str = Field("C.UTF-8", pattern=r"^([a-z]{2,3}_[A-Z]{2}|C)(\.UTF-8)?(@[a-z]+)?$")
    timezone: str = "UTC"
    keyboard: str = Field("us", pattern=r"^[a-z]{2,3}(\([a-z0-9_-]+\))?$")
    users: list[User] = Field(default_factory=list)
    autologin: Optional[str] = None
    files: Optional[str] = None
    scripts: list[str] = Field(default_factory=list)
    services: list[str] = Field(default_factory=list)
    kernel_cmdline: str = ""
    disk: Disk = Field(default_factory=Disk)
    output: Output = Field(default_factory=Output)
    tools: dict[str, dict[str, Any]] = Field(default_factory=dict)

    # where the recipe was read from (not a YAML field)
    source: Optional[Path] = Field(None, exclude=True)

    @field_validator("packages")
    @classmethod
    def _packages(cls, v):
        for p in v:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9+._-]*", p):
                raise ValueError(f"{p!r} is not a package name (allowed: letters, digits, + - . _)")
        return v

    @field_validator("services")
    @classmethod
    def _services(cls, v):
        for s in v:
            if not re.match(r"^[A-Za-z0-9:_.@-]+$", s):
                raise ValueError(f"{s!r} is not a systemd unit name")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v):
        if v not in ("UTC", "Etc/UTC") and v not in zoneinfo.available_timezones():
            raise ValueError(f"{v!r} is not a time zone (allowed: a tz database name such as UTC or Europe/Paris)")
        return v

    @field_validator("kernel_cmdline")
    @classmethod
    def _cmdline(cls, v):
        if any(c in v for c in "\n'\"`$;\\"):
            raise ValueError("must be plain kernel parameters (no quotes, newlines, $, ;, ` or backslashes)")
        return v

    @field_validator("release", mode="before")
    @classmethod
    def _release(cls, v):
        # `release: 13` in YAML is a number
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _cross(self):
        names = [u.name for u in self.users]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"users: duplicate user name(s) {', '.join(sorted(dup))}")
        if self.autologin is not None and self.autologin not in names:
            raise ValueError(f"autologin: {self.autologin!r} is not one of the users "
                             f"(allowed: {', '.join(names) or 'none defined'})")
        return self

    # -- derived values
    @property
    def base_dir(self) -> Path:
        return self.source.parent if self.source else Path.cwd()

    @property
    def files_dir(self) -> Optional[Path]:
        return (self.base_dir / self.files) if self.files else None

    @property
    def script_paths(self) -> list[Path]:
        return [self.base_dir / s for s in self.scripts]

    def user_uid(self, name: str) -> int:
        """UIDs are given in order from 1000 unless a user sets one."""
        used = {u.uid for u in self.users if u.uid}
        nxt = 1000
        for u in self.users:
            if u.uid:
                uid = u.uid
            else:
                while nxt in used:
                    nxt += 1
                uid, nxt = nxt, nxt + 1
            if u.name == name:
                return uid
        raise KeyError(name)

    def tool_options(self, tool: str) -> dict[str, Any]:
        return dict(self.tools.get(tool, {}))

    def as_data(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"source"})

    def digest(self) -> str:
        """sha256 over the recipe's data and the content of its overlay files and scripts."""
        h = hashlib.sha256(json.dumps(self.as_data(), sort_keys=True).encode())
        paths: list[Path] = list(self.script_paths)
        if self.files_dir and self.files_dir.is_dir():
            paths += sorted(p for p in self.files_dir.rglob("*") if p.is_file() or p.is_symlink())
        for p in paths:
            h.update(str(p.relative_to(self.base_dir)).encode())
            h.update(os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
        return "sha256:" + h.hexdigest()


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key]})", key_node.start_mark)
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _field_path(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _explain(err: dict, model_fields: dict) -> tuple[str, str]:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        parent = _fields_at(loc[:-1])
        hint = " (a plain password is never written in a recipe: use password_hash or password_env)" \
            if loc and loc[-1] == "password" else ""
        msg = f"unknown field (allowed: {', '.join(parent)}){hint}"
    elif err["type"] == "missing":
        msg = "is required"
    elif err["type"] == "string_pattern_mismatch":
        msg = f"{err.get('input')!r} is not allowed (must match {err['ctx']['pattern']})"
    elif err["type"] == "literal_error":
        msg = f"{err.get('input')!r} is not allowed (allowed: {err['ctx']['expected']})"
    elif msg.startswith("users: ") or msg.startswith("autologin: "):
        field, msg = msg.split(": ", 1)
        loc = (field,)
    return _field_path(loc), msg


def _fields_at(loc: tuple) -> list[str]:
    model: Any = Recipe
    for part in loc:
        if isinstance(part, int):
            continue
        ann = model.model_fields[part].annotation
        for cand in (User, Disk, Output):
            if cand is ann or cand in getattr(ann, "__args__", ()):
                model = cand
                break
    return [n for n in model.model_fields if n != "source"]


def recipe_from_data(data: Any, source: Path | None = None) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(source, "", f"the recipe must be a YAML mapping of fields, not {type(data).__name__}")
    try:
        recipe = Recipe.model_validate({**data, "source": source})
    except ValidationError as e:
        errs = [_explain(err, Recipe.model_fields) for err in e.errors()]
        field, msg = errs[0]
        if len(errs) > 1:
            msg += "; also " + "; ".join(f"{f}: {m}" for f, m in errs[1:])
        raise RecipeError(source, field, msg) from None
    _check_paths(recipe)
    return recipe


def _check_paths(recipe: Recipe) -> None:
    if recipe.files is not None:
        if not recipe.files_dir.is_dir():
            raise RecipeError(recipe.source, "files",
                              f"overlay directory {recipe.files_dir} does not exist "
                              "(allowed: a directory relative to the recipe file)")
    for i, p in enumerate(recipe.script_paths):
        if not p.is_file():
            raise RecipeError(recipe.source, f"scripts.{i}",
                              f"script {p} does not exist (allowed: a file relative to the recipe file)")


def resolve_recipe_path(name_or_path: str | os.PathLike) -> Path:
    s = str(name_or_path)
    p = Path(s)
    if p.suffix in (".yaml", ".yml") or os.sep in s or p.exists():
        if not p.is_file():
            raise RecipeError(p, "", "no such recipe file")
        return p.resolve()
    cand = recipes_dir() / f"{s}.yaml"
    if cand.is_file():
        return cand
    known = ", ".join(list_recipe_names()) or "none"
    raise RecipeError(s, "", f"no recipe of that name in {recipes_dir()} (allowed: {known}, or a path to a YAML file)")


def load_recipe(name_or_path: str | os.PathLike | Recipe) -> Recipe:
    if isinstance(name_or_path, Recipe):
        return name_or_path
    path = resolve_recipe_path(name_or_path)
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise RecipeError(path, "", f"not valid YAML: {where}{problem}") from None
    return recipe_from_data(data, path)


def list_recipe_names() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def recipe_table(recipe: Recipe):
    """The recipe's fields as a two-column pandas table (nested fields flattened, e.g. disk.size)."""
    import pandas as pd
    rows = []

    def walk(prefix, value):
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for i, v in enumerate(value):
                walk(f"{prefix}.{i}", v)
        else:
            rows.append({"field": prefix, "value": ", ".join(map(str, value)) if isinstance(value, list)
                         else value})
    walk("", recipe.as_data())
    return pd.DataFrame(rows).set_index("field")
