"""Recipe validation: the shipped recipes are valid; bad input is rejected with the file, the field and what is
allowed in the message."""
import copy

import pytest
import yaml

from diskimages import RecipeError, list_recipe_names
from diskimages.cli import main as cli_main
from diskimages.tools import load_checked as load_recipe

GOOD = {
    "name": "t", "distro": "debian", "release": "bookworm", "desktop": "xfce",
    "users": [{"name": "user", "password_hash": "$6$salt$abcdefghijklmnopqrstuv", "sudo": True}],
    "autologin": "user",
}


def write(tmp_path, data, name="r.yaml"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def variant(**changes):
    d = copy.deepcopy(GOOD)
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    return d


@pytest.mark.parametrize("name", ["debian-12-xfce", "debian-12-gnome", "debian-12-minimal", "debian-13-xfce",
                                  "debian-13-gnome", "debian-13-minimal"])
def test_shipped_recipes_are_valid(name):
    r = load_recipe(name)
    assert r.name == name and r.distro == "debian"
    assert r.digest().startswith("sha256:") and len(r.digest()) == 71


def test_default_recipe_is_listed():
    assert {"debian-13-xfce", "debian-13-gnome", "debian-13-minimal", "debian-12-xfce", "debian-12-gnome",
            "debian-12-minimal"} <= set(list_recipe_names())


def test_recipe_by_path_anywhere(tmp_path):
    r = load_recipe(write(tmp_path, GOOD))
    assert r.source == tmp_path / "r.yaml" and r.user_uid("user") == 1000


BAD = [
    # (data, field named in the error, words the message must contain)
    (variant(desktop="cinnamon"), "desktop", ["'cinnamon' is not a Debian desktop", "xfce", "none"]),
    (variant(distro="gentoo"), "distro", ["'gentoo' is not allowed", "allowed: arch, debian, fedora, ubuntu"]),
    (variant(colour="blue"), "colour", ["unknown field", "allowed:", "packages"]),
    (variant(release=None), "release", ["is required"]),
    (variant(users=[{"name": "user", "password": "secret"}], autologin=None), "users.0.password",
     ["unknown field", "password_hash", "password_env"]),
    (variant(users=[{"name": "user", "password_hash": "plain-text"}]), "users.0.password_hash",
     ["not a crypt(3) hash", "password_env"]),
    (variant(autologin="bob"), "autologin", ["'bob' is not one of the users", "allowed: user"]),
    (variant(disk={"size": "512M"}), "disk", ["too small", "1G or more"]),
    (variant(disk={"size": "lots"}), "disk.size", ["not a size", "8G"]),
    (variant(disk={"firmware": "coreboot"}), "disk.firmware", ["'coreboot'", "'uefi'", "'both'"]),
    (variant(output={"format": "raw", "compression": "zstd"}), "output", ["allowed with raw: compression none"]),
    (variant(output={"compression": "lzma"}), "output.compression", ["'lzma'", "'zstd'"]),
    (variant(timezone="Mars/Olympus"), "timezone", ["not a time zone", "Europe/Paris"]),
    (variant(packages=["Firefox ESR"]), "packages", ["'Firefox ESR' is not a package name"]),
    (variant(tools={"nosuchtool": {}}), "tools.nosuchtool", ["unknown tool", "mmdebstrap"]),
    (variant(release="potato"), "release", ["'potato' is not a Debian release", "bookworm (12)", "trixie (13)"]),
    (variant(release="14"), "release", ["'14' is not a Debian release", "trixie (13)"]),
    (variant(architecture="arm64"), "architecture", ["'arm64' is not built for Debian", "qemu-user",
                                                     "allowed: amd64"]),
    (variant(architecture="sparc"), "architecture", ["'sparc'", "allowed: amd64"]),
    (variant(desktop="none", packages=["Tree"]), "packages", ["'Tree' is not a Debian package name"]),
    (variant(disk={"size": "2G"}), "disk.size", ["too small for the xfce desktop of Debian", "3G or more"]),
    (variant(users=[{"name": "Bad User"}], autologin=None), "users.0.name", ["'Bad User' is not allowed"]),
    (variant(users=[{"name": "u", "password_hash": "$6$a$b", "password_env": "X"}], autologin=None), "users.0",
     ["not both"]),
    (variant(kernel_cmdline="quiet; rm -rf /"), "kernel_cmdline", ["'quiet;' is not a kernel parameter"]),
]


@pytest.mark.parametrize("data,field,words", BAD, ids=[b[1] + "-" + str(i) for i, b in enumerate(BAD)])
def test_bad_recipe_names_file_field_and_allowed(tmp_path, data, field, words):
    path = write(tmp_path, data)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: {field}: "), msg
    for w in words:
        assert w in msg, (w, msg)


def test_missing_overlay_and_script(tmp_path):
    p = write(tmp_path, variant(files="nowhere"))
    with pytest.raises(RecipeError, match=r"r\.yaml: files: folder 'nowhere' does not exist \(allowed: a folder"):
        load_recipe(p)
    p = write(tmp_path, variant(scripts=["missing.sh"]))
    with pytest.raises(RecipeError, match=r"r\.yaml: scripts\.0: file 'missing\.sh' does not exist"):
        load_recipe(p)


def test_yaml_syntax_error_names_line(tmp_path):
    p = write(tmp_path, "name: t\ndistro: [debian\n")
    with pytest.raises(RecipeError, match=r"r\.yaml: not valid YAML: line \d+, column \d+"):
        load_recipe(p)


def test_duplicate_keys_are_rejected_not_overwritten(tmp_path):
    p = write(tmp_path, "name: t\ndistro: debian\nrelease: bookworm\ndesktop: xfce\ndesktop: gnome\n")
    with pytest.raises(RecipeError, match=r"duplicate key 'desktop' \(first at line 4\)"):
        load_recipe(p)


def test_not_a_mapping(tmp_path):
    with pytest.raises(RecipeError, match=r"r\.yaml: the recipe must be a YAML mapping of fields, not list"):
        load_recipe(write(tmp_path, "- a\n- b\n"))


def test_unknown_recipe_name_lists_known_ones():
    with pytest.raises(RecipeError, match=r"no recipe of that name .*allowed: .*debian-12-xfce"):
        load_recipe("debian-99-nothing")


def test_digest_follows_overlay_content(tmp_path):
    (tmp_path / "files/etc").mkdir(parents=True)
    f = tmp_path / "files/etc/motd"
    f.write_text("one")
    p = write(tmp_path, variant(files="files"))
    d1 = load_recipe(p).digest()
    f.write_text("two")
    assert load_recipe(p).digest() != d1


def test_cli_validate(tmp_path, capsys):
    assert cli_main(["validate", "debian-12-xfce"]) == 0
    assert "valid (debian bookworm, desktop xfce" in capsys.readouterr().out
    bad = write(tmp_path, variant(desktop="cde"))
    assert cli_main(["validate", str(bad)]) == 2
    assert f"error: {bad}: desktop: 'cde' is not a Debian desktop (allowed: none, xfce" in capsys.readouterr().err
