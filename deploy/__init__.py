"""The Kubernetes deployment: manifests under ``base/`` and ``overlays/``, rendered parts from ``gen``."""
