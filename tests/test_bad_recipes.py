"""Hostile and careless recipes: each is refused by `diskimages validate` with exit 2 and one line naming the
file, the field and what is allowed, and never echoes a file's content."""
import os

import pytest
import yaml

from diskimages.cli import main as cli_main
from diskimages.recipe import RecipeError

GOOD = {"name": "t", "distro": "debian", "release": "trixie", "desktop": "xfce",
        "users": [{"name": "user", "password_hash": "$6$salt$abcdefghijklmnopqrstuv", "sudo": True}],
        "autologin": "user"}


def v(**changes):
    d = yaml.safe_load(yaml.safe_dump(GOOD))
    for k, val in changes.items():
        if val is None:
            d.pop(k, None)
        else:
            d[k] = val
    return d


def user(**kw):
    return [{"name": "user", "password_hash": "$6$salt$abcdefghijklmnopqrstuv", **kw}]


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")) + "name: t\n"

# (id, recipe data or raw text, field named, words the message must contain)
BAD = [
    ("desktop", v(desktop="cinnamon"), "desktop", ["'cinnamon' is not a Debian desktop", "allowed: none, xfce"]),
    ("distro", v(distro="gentoo"), "distro", ["'gentoo' is not allowed", "allowed: arch, debian, fedora, ubuntu"]),
    ("unknown-field", v(colour="blue"), "colour", ["unknown field", "allowed:"]),
    ("release-missing", v(release=None), "release", ["is required"]),
    ("plain-password", v(users=[{"name": "user", "password": "x"}], autologin=None), "users.0.password",
     ["password_env"]),
    ("hash-plain", v(users=user(password_hash="plain")), "users.0.password_hash", ["crypt(3)", "allowed"]),
    ("hash-newline", v(users=user(password_hash="$6$a$b\n")), "users.0.password_hash", ["crypt(3)"]),
    ("autologin", v(autologin="bob"), "autologin", ["'bob'", "allowed: user"]),
    ("disk-small", v(disk={"size": "512M"}), "disk", ["too small", "allowed: 1G or more"]),
    ("disk-huge", v(disk={"size": "9999999T"}), "disk", ["too large", "allowed: up to 2T"]),
    ("disk-word", v(disk={"size": "lots"}), "disk.size", ["not a size", "allowed"]),
    ("disk-bool", v(disk={"size": True}), "disk.size", ["not a size", "allowed"]),
    ("disk-desktop", v(disk={"size": "2G"}), "disk.size", ["too small for the xfce desktop", "allowed: 3G"]),
    ("firmware", v(disk={"firmware": "coreboot"}), "disk.firmware", ["'coreboot'", "'uefi'"]),
    ("raw-compressed", v(output={"format": "raw", "compression": "zstd"}), "output", ["allowed with raw"]),
    ("compression", v(output={"compression": "lzma"}), "output.compression", ["'lzma'", "'zstd'"]),
    ("locale", v(locale="xx_YY.UTF-8"), "locale", ["not a Debian locale", "allowed"]),
    ("locale-near", v(locale="de_DE@foo"), "locale", ["not a Debian locale", "de_DE.UTF-8"]),
    ("timezone", v(timezone="Mars/Olympus"), "timezone", ["not a time zone", "allowed"]),
    ("package-space", v(packages=["Firefox ESR"]), "packages", ["not a package name", "allowed"]),
    ("package-newline", v(packages=["vim\n"]), "packages", ["not a package name", "allowed"]),
    ("package-debian-rule", v(packages=["Tree"]), "packages", ["not a Debian package name", "allowed"]),
    ("release-unknown", v(release="potato"), "release", ["not a Debian release", "trixie (13)"]),
    ("release-future", v(release=14), "release", ["'14' is not a Debian release", "bookworm (12)"]),
    ("arch-arm64", v(architecture="arm64"), "architecture", ["not built for Debian", "allowed: amd64"]),
    ("arch-unknown", v(architecture="sparc"), "architecture", ["'sparc'", "allowed: amd64"]),
    ("user-name", v(users=[{"name": "Bad User"}], autologin=None), "users.0.name", ["'Bad User' is not allowed"]),
    ("both-passwords", v(users=user(password_env="X"), autologin=None), "users.0", ["not both"]),
    ("group-newline", v(users=user(groups=["audio\n"])), "users.0.groups", ["not a group name", "allowed"]),
    ("shell-newline", v(users=user(shell="/bin/bash\nx")), "users.0.shell", ["is not allowed"]),
    ("cmdline-semicolon", v(kernel_cmdline="quiet; rm -rf /"), "kernel_cmdline", ["not a kernel parameter",
                                                                                 "allowed"]),
    ("cmdline-hash", v(kernel_cmdline="quiet #x"), "kernel_cmdline", ["not a kernel parameter"]),
    ("cmdline-amp", v(kernel_cmdline="a=b&c"), "kernel_cmdline", ["not a kernel parameter"]),
    ("cmdline-pipe", v(kernel_cmdline="a|b"), "kernel_cmdline", ["not a kernel parameter"]),
    ("cmdline-brace", v(kernel_cmdline="x={w /tmp/pwn}"), "kernel_cmdline", ["not a kernel parameter"]),
    ("service-option", v(services=["--now"]), "services", ["not a systemd unit name", "allowed"]),
    ("service-newline", v(services=["ssh\n"]), "services", ["not a systemd unit name"]),
    ("name-long", v(name="n" * 300), "name", ["is not allowed"]),
    ("files-escape", v(files="../" * 15 + "etc"), "files", ["is not inside the recipe's folder", "allowed"]),
    ("files-proc", v(files="../" * 15 + "proc/self"), "files", ["is not inside the recipe's folder"]),
    ("script-escape", v(scripts=["/etc/shadow"]), "scripts.0", ["is not inside the recipe's folder"]),
    ("tool-unknown", v(tools={"nosuchtool": {}}), "tools.nosuchtool", ["unknown tool", "mmdebstrap"]),
    ("tool-option", v(tools={"mmdebstrap": {"frobnicate": 1}}), "tools.mmdebstrap.frobnicate",
     ["unknown option", "allowed: variant, components, extra_args"]),
    ("components-inject", v(tools={"mmdebstrap": {"components": ["main\ndeb [trusted=yes] http://x y z"]}}),
     "tools.mmdebstrap.components", ["allowed: a list of archive components"]),
    ("host-hook", v(tools={"mmdebstrap": {"extra_args": ["--customize-hook=touch /pwned"]}}),
     "tools.mmdebstrap.extra_args", ["no hooks"]),
    ("mkosi-docs", v(tools={"mkosi": {"with_docs": "yes"}}), "tools.mkosi.with_docs", ["true or false"]),
    ("wait-zero", v(tools={"virt-install": {"wait_minutes": 0}}), "tools.virt-install.wait_minutes",
     ["from 1 to 1440"]),
    ("alias-bomb", BOMB, "", ["aliases are expanded (a YAML alias bomb)"]),
    ("alias-flood", "x: &x 1\ny: [" + ", ".join(["*x"] * 150) + "]\n", "", ["more than 100 YAML aliases"]),
    ("duplicate-key", "name: a\nname: b\n", "", ["duplicate key 'name'"]),
    ("a-list", "- name: t\n", "", ["must be a YAML mapping"]),
]


@pytest.mark.parametrize("data,field,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_recipe_is_one_line_naming_file_field_and_allowed(tmp_path, capsys, data, field, words):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "r.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    assert cli_main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {path}: {field}: " if field else f"error: {path}: "), err
    for w in words:
        assert w in err, (w, err)


def test_at_least_40_bad_recipes():
    assert len(BAD) >= 40


def test_binary_and_secret_files_are_refused_without_echo(tmp_path, capsys):
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" + os.urandom(64))
    assert cli_main(["validate", str(binary)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {binary}: not a text file (allowed: a UTF-8 YAML file)"
    shadow = tmp_path / "shadow.yaml"
    shadow.write_text("root:$y$j9T$s3cretsaltvalue$hashhashhash:19000:0:99999:7:::\n")
    assert cli_main(["validate", str(shadow)]) == 2
    err = capsys.readouterr().err
    assert "s3cret" not in err and "hashhash" not in err and err.startswith(f"error: {shadow}: ")
    big = tmp_path / "big.yaml"
    big.write_text("name: t\n" + "#" * (2 << 20))
    assert cli_main(["validate", str(big)]) == 2
    assert "at most 1 MiB" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0, reason="build() needs root")
def test_unset_password_variable_stops_the_build_before_any_work(tmp_path, monkeypatch):
    from diskimages.build import build
    monkeypatch.delenv("DISKIMAGES_UNSET_PW", raising=False)
    r = tmp_path / "r.yaml"
    r.write_text(yaml.safe_dump(v(desktop="none", autologin=None, disk={"size": "2G"},
                                  users=[{"name": "u", "password_env": "DISKIMAGES_UNSET_PW"}])))
    with pytest.raises(RecipeError, match=r"users\.0\.password_env: environment variable DISKIMAGES_UNSET_PW is not set"):
        build(r, "mmdebstrap", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
