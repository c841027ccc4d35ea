# make docs: execute the notebooks over the comparison's records and render the HTML site into site/
RESULTS ?= build/compare
PY ?= .venv/bin/python

.PHONY: docs test
docs:
	$(PY) -m diskimages docs --results $(RESULTS) --output site
test:
	$(PY) -m pytest -v -rs
