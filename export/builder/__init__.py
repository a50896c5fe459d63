"""The bundle build: its options (``options``), the graphs it exports (``records``), the passes
after export (``passes``), the manifest (``manifest``) and the build itself (``bundle``)."""
