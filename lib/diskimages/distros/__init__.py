"""One module per distribution behind one interface (packages for a desktop, display manager, sessions).

A distribution module exposes a `Distro` object; `get_distro(name)` returns it.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DesktopSpec:
    packages: tuple[str, ...]
    display_manager: str | None     # lightdm | gdm3 | sddm | None (console)
    session: str | None             # the X session name the display manager starts


@dataclass(frozen=True)
class Distro:
    name: str
    base_packages: tuple[str, ...]
    desktops: dict[str, DesktopSpec] = field(default_factory=dict)
    sudo_group: str = "sudo"

    def packages_for(self, recipe) -> list[str]:
        pkgs = list(self.base_packages) + list(self.desktops[recipe.desktop].packages) + list(recipe.packages)
        if any(u.sudo or u.sudo_nopasswd for u in recipe.users):
            pkgs.append("sudo")
        return list(dict.fromkeys(pkgs))


def get_distro(name: str) -> Distro:
    from . import debian
    registry = {"debian": debian.DEBIAN}
    if name not in registry:
        raise KeyError(f"no distribution module for {name!r} (have: {', '.join(registry)})")
    return registry[name]
