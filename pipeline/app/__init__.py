"""The application on top of the library, the exporter and the runtimes: the ``sparse-deploy``
command line, recipes, the resumable ``run`` and the serving team's report. Nothing below
imports it (``tests/test_layering.py``)."""
