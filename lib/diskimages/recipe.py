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
from .errors import InputError


_SIZE_RE = re.compile(r"\s*(\d{1,12}(?:\.\d{1,6})?)\s*([KMGT]i?B?|B)?\s*", re.I)
MAX_DISK = 2 << 40
MAX_RECIPE_BYTES = 1 << 20          # a recipe file larger than this is refused unread
MAX_YAML_ALIASES = 100              # YAML aliases are allowed, an alias bomb is not
MAX_YAML_NODES = 100_000            # nodes once every alias is expanded
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class RecipeError(InputError):
    """A recipe is unusable. `str()` reads `FILE: FIELD: what is wrong (allowed: ...)`."""

    def __init__(self, file: str | os.PathLike | None, field: str, message: str):
        self.file, self.field, self.message = str(file) if file else "<recipe>", field, message
        self.errors = [(field, message)]
        super().__init__(f"{self.file}: {field}: {message}" if field else f"{self.file}: {message}")


def _short(value: Any, limit: int = 40) -> str:
    """A value for an error message: repr, cut to `limit` characters (never a whole file's content)."""
    r = repr(value)
    return r if len(r) <= limit else r[:limit] + "...'"


def parse_size(value: str | int) -> int:
    """'8G', '512MiB', '4096' (bytes) -> bytes."""
    if isinstance(value, bool):
        raise InputError(f"{value!r} is not a size (allowed: a number with an optional unit K, M, G or T, e.g. 8G)")
    if isinstance(value, int):
        return value
    m = _SIZE_RE.fullmatch(str(value))
    if not m:
        raise InputError(f"{_short(value)} is not a size (allowed: a number with an optional unit K, M, G or T, e.g. 8G)")
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
    shell: str = Field("/bin/bash", pattern=r"^/[A-Za-z0-9_./-]{1,100}$")
    uid: Optional[int] = Field(None, ge=1000, le=60000)

    @field_validator("password_hash")
    @classmethod
    def _hash(cls, v):
        if v is not None and not re.fullmatch(r"\$(1|5|6|y|gy|2[abxy]?|7)\$[./A-Za-z0-9$=]+", v) and v not in ("!", "*"):
            raise InputError("is not a crypt(3) hash (allowed: a hash like $6$... or $y$... from "
                             "`mkpasswd -m sha-512`, or '!' for a locked password); plain passwords are never "
                             "written in a recipe: use password_env")
        return v

    @field_validator("groups")
    @classmethod
    def _groups(cls, v):
        for g in v:
            if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", g):
                raise InputError(f"{g!r} is not a group name (allowed: lower-case letters, digits, _ and -)")
        return v

    @model_validator(mode="after")
    def _one_password(self):
        if self.password_hash and self.password_env:
            raise InputError("give password_hash or password_env, not both")
        return self


class Disk(_Strict):
    size: str = "8G"
    filesystem: Literal["ext4"] = "ext4"
    partition_table: Literal["gpt"] = "gpt"
    firmware: Literal["bios", "uefi", "both"] = "both"
    esp_size: str = "200M"

    @field_validator("size", "esp_size", mode="before")
    @classmethod
    def _number(cls, v):
        if isinstance(v, bool):
            raise InputError(f"{v!r} is not a size (allowed: a number with an optional unit K, M, G or T, e.g. 8G)")
        return str(v) if isinstance(v, int) else v

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
            raise InputError(f"size {self.size} is too small (allowed: 1G or more)")
        if self.size_bytes > MAX_DISK:
            raise InputError(f"size {self.size} is too large (allowed: up to 2T)")
        if not (64 << 20) <= self.esp_bytes <= (1 << 30):
            raise InputError(f"esp_size {self.esp_size} is out of range (allowed: 64M to 1G)")
        return self


class Output(_Strict):
    format: Literal["qcow2", "raw"] = "qcow2"
    compression: Literal["zstd", "zlib", "none"] = "zstd"
    # qcow2 cluster size: bigger clusters compress better (2M: 7 % smaller) but every read of a compressed
    # cluster unpacks all of it (4 KiB random reads 16x slower at 2M, measured with qemu-img bench): 64K stays
    # the default for the working image; the download format (push --download-format raw.zst) is the small one
    cluster_size: Literal["64K", "128K", "256K", "512K", "1M", "2M"] = "64K"
    # zstd's level for the clusters. 4, the default: zstd's level 3 (qemu-img's) matches from 5 bytes on 64 KiB
    # clusters, 4 from 4 bytes, which makes debian-12-xfce 1.3 % smaller for 0.3 s more (2.6 s on 2 cores).
    # 6 makes it 5 % smaller for 3.5 s more; 19 about 10 % for 2 minutes. Reading speed is the same.
    level: int = Field(4, ge=1, le=19)

    @model_validator(mode="after")
    def _raw(self):
        if self.format == "raw" and self.compression != "none":
            raise InputError("format raw cannot be compressed (allowed with raw: compression none)")
        if self.level != type(self).model_fields["level"].default and self.compression != "zstd":
            raise InputError(f"level {self.level} is for zstd only (allowed with compression {self.compression}: "
                             "no level)")
        return self


class Recipe(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    description: str = Field("", max_length=500)
    # distro, release and architecture are checked against the distribution modules (distros.check)
    distro: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    release: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    architecture: str = Field("amd64", pattern=r"^[a-z0-9_]+$")
    # checked against the distribution's own desktops (distros.check)
    desktop: str = Field("none", pattern=r"^[a-z][a-z0-9-]{0,31}$")
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
    # a lean image: no documentation, man or info pages, nor translations other than the locale's language
    # (licence files stay); the same rule for every tool, and for packages installed later in the image
    lean: bool = False
    disk: Disk = Field(default_factory=Disk)
    output: Output = Field(default_factory=Output)
    tools: dict[str, dict[str, Any]] = Field(default_factory=dict)

    # where the recipe was read from (not a YAML field)
    source: Optional[Path] = Field(None, exclude=True)

    @field_validator("packages")
    @classmethod
    def _packages(cls, v):
        for p in v:
            # a leading @ names a package group (dnf, pacman); each distribution applies its own rule after this
            if not re.fullmatch(r"@?[A-Za-z0-9][A-Za-z0-9+._-]*", p):
                raise InputError(f"{p!r} is not a package name (allowed: letters, digits, + - . _, "
                                 "a leading @ for a group)")
        return v

    @field_validator("services")
    @classmethod
    def _services(cls, v):
        for s in v:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9:_.@\\-]{0,254}", s):
                raise InputError(f"{_short(s)} is not a systemd unit name (allowed: letters, digits and :_.@-, "
                                 "not starting with -)")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v):
        if v not in ("UTC", "Etc/UTC") and v not in zoneinfo.available_timezones():
            raise InputError(f"{v!r} is not a time zone (allowed: a tz database name such as UTC or Europe/Paris)")
        return v

    @field_validator("kernel_cmdline", mode="before")
    @classmethod
    def _cmdline(cls, v):
        # a string or a list of tokens; each token key[=value] from a safe set (it goes into GRUB's
        # configuration and a sed expression)
        tokens = v if isinstance(v, list) else str(v).split(" ") if isinstance(v, str) else None
        if tokens is None:
            raise InputError("must be kernel parameters: a string or a list of key[=value] tokens")
        tokens = [t for t in tokens if t != ""]
        for t in tokens:
            if not isinstance(t, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}(=[A-Za-z0-9_.,:/+@=-]{0,200})?", t):
                raise InputError(f"{_short(t)} is not a kernel parameter (allowed: key[=value] with letters, "
                                 "digits and _.-, values also ,:/+@=; no quotes, spaces inside, #, &, |, braces or $)")
        return " ".join(tokens)

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
            raise InputError(f"users: duplicate user name(s) {', '.join(sorted(dup))}")
        if self.autologin is not None and self.autologin not in names:
            raise InputError(f"autologin: {self.autologin!r} is not one of the users "
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
        self._hash_overlay(h)
        return "sha256:" + h.hexdigest()

    def overlay_digest(self) -> str:
        """sha256 over what the recipe's scripts and overlay files are (which may change anything in the tree)."""
        h = hashlib.sha256(json.dumps([self.scripts, self.files]).encode())
        self._hash_overlay(h)
        return "sha256:" + h.hexdigest()

    def _hash_overlay(self, h) -> None:
        paths: list[Path] = list(self.script_paths)
        if self.files_dir and self.files_dir.is_dir():
            paths += sorted(p for p in self.files_dir.rglob("*") if p.is_file() or p.is_symlink())
        for p in paths:
            h.update(str(p.relative_to(self.base_dir)).encode())
            h.update(os.readlink(p).encode() if p.is_symlink() else p.read_bytes())


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys instead of silently keeping the last one, and more than
    MAX_YAML_ALIASES aliases (an alias bomb expands a few hundred bytes into gigabytes)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases = getattr(self, "_aliases", 0) + 1
            if self._aliases > MAX_YAML_ALIASES:
                raise yaml.composer.ComposerError(None, None, f"more than {MAX_YAML_ALIASES} YAML aliases",
                                                  self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def construct_document(self, node):
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            raise yaml.constructor.ConstructorError(None, None, f"more than {MAX_YAML_NODES} values once its "
                                                    "aliases are expanded (a YAML alias bomb)", node.start_mark)
        return super().construct_document(node)


def _expanded_size(node, memo: dict) -> int:
    """How many nodes the document has with every alias expanded (shared nodes counted each time)."""
    key = id(node)
    if key not in memo:
        memo[key] = 1      # a cycle counts once
        if isinstance(node, yaml.SequenceNode):
            memo[key] = 1 + sum(_expanded_size(n, memo) for n in node.value)
        elif isinstance(node, yaml.MappingNode):
            memo[key] = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    return memo[key]


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
    # a key that is no field name is not echoed: it may be a line of some other file (a password hash)
    return ".".join(str(p) if isinstance(p, int) or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,40}", str(p))
                    else "(a key that is not a field name)" for p in loc) or "(top level)"


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
        msg = f"{_short(err.get('input'))} is not allowed (must match {err['ctx']['pattern']})"
    elif err["type"] == "literal_error":
        msg = f"{_short(err.get('input'))} is not allowed (allowed: {err['ctx']['expected']})"
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
        error = RecipeError(source, field, msg)
        error.errors = errs          # every (field, message), for a form that shows each next to its field
        raise error from None
    _check_paths(recipe)
    return recipe


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve(strict=True).relative_to(folder.resolve())
        return True
    except (OSError, ValueError, RuntimeError):
        return False


def _check_paths(recipe: Recipe) -> None:
    """Overlay folders and scripts must be inside the recipe's own folder (links resolved): a recipe never
    reaches the build host's other files, /proc, /sys or /dev."""
    base = recipe.base_dir
    wanted = ([("files", recipe.files, recipe.files_dir, "folder")] if recipe.files is not None else []) + \
        [(f"scripts.{i}", rel, p, "file") for i, (rel, p) in enumerate(zip(recipe.scripts, recipe.script_paths))]
    for field, rel, path, kind in wanted:
        allowed = f"(allowed: a {kind} relative to the recipe file, inside its folder)"
        if not os.path.lexists(path):
            problem = "does not exist"
        elif not _inside(path, base):
            problem = f"is not inside the recipe's folder {base}"
        elif not (path.is_dir() if kind == "folder" else path.is_file()):
            problem = f"is not a {kind}"
        else:
            continue
        raise RecipeError(recipe.source, field, f"{kind} {_short(rel)} {problem} {allowed}")


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
        if not path.is_file() or path.stat().st_size > MAX_RECIPE_BYTES:
            raise RecipeError(path, "", f"not a recipe file (allowed: a regular YAML file of at most "
                                        f"{MAX_RECIPE_BYTES >> 20} MiB)")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise RecipeError(path, "", "not a text file (allowed: a UTF-8 YAML file)") from None
    except OSError as e:
        raise RecipeError(path, "", f"cannot be read: {e.strerror}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
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
