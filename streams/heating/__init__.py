"""The heating job: a one-shot burner control process and the controller that launches it.

* :mod:`~streams.heating.machine` — the pure EN 298 style state machine (no I/O);
* :mod:`~streams.heating.job` — the process (``python -m streams.heating --target C``);
* :mod:`~streams.heating.controller` — at most one job at a time, locally as a child
  process or in Kubernetes as a Job (:mod:`~streams.heating.k8s`).

Importing this package does no I/O and pulls in no Kafka client or web framework.
"""
