"""Reading executed notebooks in tests."""


def outputs(nb):
    """The text of every output of an executed notebook (stream text and text/* data), one item per output."""
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            yield "".join(out.get("text", "")) + "".join(
                "".join(v) if isinstance(v, list) else str(v) for k, v in out.get("data", {}).items()
                if k.startswith("text/"))
