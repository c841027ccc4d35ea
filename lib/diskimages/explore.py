"""The explorer (notebooks/explore.ipynb): ipywidgets to pick a recipe and a tool, edit the main recipe fields
with live validation (the error is shown next to its field), build with a progress bar and a live log tail, and
see the result row, the boot screenshot and a publish button.

The widgets only hold state; everything they do goes through `Explorer` methods (`validate`, `build_request`,
`on_event`, `start_build`, `publish`) that tests call directly.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Optional

import ipywidgets as W

from . import distros
from .recipe import RecipeError, list_recipe_names, recipe_from_data
from .tools import check_recipe, get_tool, load_checked, names as tool_names

EDITABLE = ("desktop", "packages", "users", "autologin", "disk", "output")
LOG_LINES = 12


def _split(text: str) -> list[str]:
    return [p for p in text.replace(",", " ").split() if p]


class Explorer:
    def __init__(self, recipe: str = "debian-13-xfce", tool: str = "mmdebstrap", output_dir: str = "build"):
        self.base = load_checked(recipe)
        self.output_dir = Path(output_dir)
        self.result = None
        self.thread: Optional[threading.Thread] = None
        self.recipe_w = W.Dropdown(options=list_recipe_names(), value=self.base.name, description="recipe")
        self.tool_w = W.Dropdown(options=self.tools_for(self.base), description="tool")
        if tool in self.tool_w.options:
            self.tool_w.value = tool
        self.desktop_w = W.Dropdown(options=list(distros.get(self.base.distro).desktops), description="desktop")
        self.packages_w = W.Text(description="packages", placeholder="extra packages, space separated")
        self.users_w = W.Text(description="users", placeholder="user names, space separated")
        self.autologin_w = W.Text(description="autologin", placeholder="a user name, or empty")
        self.size_w = W.Text(description="disk size")
        self.compression_w = W.Dropdown(options=["zstd", "zlib", "none"], description="compression")
        self.errors = {f: W.HTML() for f in EDITABLE}
        self.status = W.HTML()
        self.build_b = W.Button(description="Build", button_style="primary", icon="play")
        self.progress = W.IntProgress(min=0, max=1, description="phases")
        self.log = W.Textarea(layout=W.Layout(width="100%", height="14em"), disabled=True)
        self.result_out = W.Output()
        self.coverage_out = W.Output()
        self.ref_w = W.Text(description="push to", placeholder="HOST/REPO:TAG, or REPO:TAG (embedded registry)")
        self.publish_b = W.Button(description="Publish", icon="upload", disabled=True)
        self.publish_out = W.HTML()
        self._lines: list[str] = []
        self._load_fields(self.base)
        for w in (self.desktop_w, self.packages_w, self.users_w, self.autologin_w, self.size_w,
                  self.compression_w):
            w.observe(lambda change: self.validate(), names="value")
        self.recipe_w.observe(self._on_recipe, names="value")
        self.tool_w.observe(lambda change: self.validate(), names="value")
        self.build_b.on_click(lambda b: self.start_build())
        self.publish_b.on_click(lambda b: self.publish())
        self.validate()

    # -- state
    @staticmethod
    def tools_for(recipe) -> list[str]:
        """The tools that build this recipe's distribution, release and architecture (installed or not)."""
        return [n for n in tool_names() if get_tool(n).cannot_build(recipe, installed=False) is None]

    def _load_fields(self, recipe) -> None:
        self.desktop_w.options = list(distros.get(recipe.distro).desktops)
        current = self.tool_w.value
        self.tool_w.options = self.tools_for(recipe)
        if current in self.tool_w.options:
            self.tool_w.value = current
        self.desktop_w.value = recipe.desktop
        self.packages_w.value = " ".join(recipe.packages)
        self.users_w.value = " ".join(u.name for u in recipe.users)
        self.autologin_w.value = recipe.autologin or ""
        self.size_w.value = recipe.disk.size
        self.compression_w.value = recipe.output.compression

    def _on_recipe(self, change) -> None:
        self.base = load_checked(change["new"])
        self._load_fields(self.base)
        self.validate()

    def data(self) -> dict[str, Any]:
        """The recipe as the widgets have edited it (users kept from the recipe keep their settings; new ones
        get a locked password)."""
        d = self.base.as_data()
        old = {u["name"]: u for u in d["users"]}
        d["desktop"] = self.desktop_w.value
        d["packages"] = _split(self.packages_w.value)
        d["users"] = [old.get(n, {"name": n}) for n in _split(self.users_w.value)]
        d["autologin"] = self.autologin_w.value.strip() or None
        d["disk"] = {**d["disk"], "size": self.size_w.value.strip()}
        d["output"] = {**d["output"], "compression": self.compression_w.value}
        return d

    def validate(self):
        """Validate the edited recipe; the message goes next to the field it names. Returns the recipe or None."""
        for e in self.errors.values():
            e.value = ""
        try:
            recipe = check_recipe(recipe_from_data(self.data(), self.base.source))
        except RecipeError as err:
            # every error at once, each next to the field it names (the rest under the form)
            self.status.value = ""
            for field, message in err.errors:
                target = self.errors.get(field.split(".")[0])
                msg = f"<span style='color:#b00'>&#9888; {field}: {_html(message)}</span>"
                if target is not None:
                    target.value += msg
                else:
                    self.status.value += msg
            self.build_b.disabled = True
            self._show_coverage(None)
            return None
        self.status.value = ""
        self.build_b.disabled = self.thread is not None and self.thread.is_alive()
        self._show_coverage(recipe)
        return recipe

    def _show_coverage(self, recipe) -> None:
        """How the chosen tool carries out each field of the edited recipe (follows the tool and the edits)."""
        self.coverage_out.clear_output()
        self.coverage = get_tool(self.tool_w.value).coverage(recipe) \
            if recipe is not None and self.tool_w.value else None
        if self.coverage is not None:
            with self.coverage_out:
                from IPython.display import display
                display(self.coverage)

    def build_request(self) -> dict[str, Any]:
        """What a click on Build runs: build.build(**request)."""
        recipe = self.validate()
        if recipe is None:
            raise RecipeError(self.base.source, "", "the recipe has errors: see the messages next to the fields")
        return {"recipe": recipe, "tool": self.tool_w.value, "output_dir": self.output_dir, "progress": False,
                "listener": self.on_event}

    # -- building
    def on_event(self, event: dict) -> None:
        self.progress.max = event["total"]
        self.progress.value = event["done"]
        self.progress.description = event["phase"] or "phases"
        if event["line"]:
            self._lines.append(event["line"].rstrip()[:200])
            del self._lines[:-LOG_LINES]
            self.log.value = "\n".join(self._lines)

    def start_build(self, boot: bool = True) -> threading.Thread:
        request = self.build_request()
        self.build_b.disabled = True
        self.publish_b.disabled = True
        self._lines.clear()
        self.status.value = f"building {request['recipe'].name} with {request['tool']}…"
        self.thread = threading.Thread(target=self._build, args=(request, boot), daemon=True)
        self.thread.start()
        return self.thread

    def _build(self, request: dict, boot: bool) -> None:
        from . import build as B
        from .boot import boot_check
        try:
            self.result = B.build(**request)
            self.status.value = f"built <code>{self.result.image}</code>"
            with self.result_out:
                from IPython.display import Image, display
                display(self.result.table())
                if boot:
                    self.status.value += " · boot check running…"
                    check = boot_check(self.result.image, self.result.record)
                    B.attach_boot(self.result, check)
                    display(check.table())
                    if check.screenshot:
                        display(Image(filename=str(check.screenshot), width=640))
                    self.status.value = (f"built <code>{self.result.image}</code> · boot check "
                                         f"{'passed' if check.passed else 'FAILED'}: {_html(check.reason)}")
            self.publish_b.disabled = False
        except BaseException as e:   # shown in the widget: a thread has nobody else to tell
            self.status.value = f"<span style='color:#b00'>build failed: {_html(str(e))}</span>"
        finally:
            self.build_b.disabled = False

    def publish(self):
        from .publish import push, registry_for
        if self.result is None:
            self.publish_out.value = "build an image first"
            return None
        ref = self.ref_w.value.strip()
        if not ref:
            self.publish_out.value = "<span style='color:#b00'>push to: give a reference such as HOST/REPO:TAG</span>"
            return None
        try:
            with registry_for(ref) as r:
                res = push(self.result.image, r, progress=False)
        except Exception as e:
            self.publish_out.value = f"<span style='color:#b00'>{_html(str(e))}</span>"
            return None
        self.publish_out.value = f"pushed <code>{ref}</code> · digest <code>{res.digest}</code>"
        return res

    # -- layout
    def widget(self) -> W.Widget:
        def row(w, field=None):
            return W.HBox([w, self.errors[field]]) if field else w
        form = W.VBox([row(self.recipe_w), row(self.tool_w), row(self.desktop_w, "desktop"),
                       row(self.packages_w, "packages"), row(self.users_w, "users"),
                       row(self.autologin_w, "autologin"), row(self.size_w, "disk"),
                       row(self.compression_w, "output"), self.status, W.HBox([self.build_b, self.progress])])
        return W.VBox([form, self.log, self.result_out, W.HBox([self.ref_w, self.publish_b]), self.publish_out,
                       W.HTML("<b>How the chosen tool carries out each field</b>"), self.coverage_out])


def _html(text: str) -> str:
    import html
    return html.escape(text)
