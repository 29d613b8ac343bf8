"""The heating job: the CronJob for scheduled heating, built by the code that builds the controller's Jobs.

:func:`streams.heating.k8s.build_job` is the one Job spec: the controller sends it to
the API server for each request, and the CronJob's ``jobTemplate`` is that spec with
the per-request parts taken out (the job id: each scheduled run draws its own).
"""

from __future__ import annotations

from typing import Any

from deploy.gen.common import IMAGE, NAME_LABEL, NAMESPACE, dns_egress, kafka_egress, meta
from streams.heating.k8s import CONTAINER, JOB_ID_LABEL, job_manifest, production_template

#: The bridge's controller builds its Jobs from the same template, with its own pod's image.
TEMPLATE = production_template(IMAGE, NAMESPACE)
SCHEDULE = "30 5 * * *"
SCHEDULED_TARGET_C = 45.0
PLACEHOLDER_ID = "scheduled"


def scheduled_job_spec() -> dict[str, Any]:
    """The controller's Job spec for one run, without its job id (``--job-id`` and the id label)."""
    job = job_manifest(PLACEHOLDER_ID, SCHEDULED_TARGET_C, TEMPLATE)
    spec = job["spec"]
    spec["template"]["metadata"]["labels"].pop(JOB_ID_LABEL)
    container = spec["template"]["spec"]["containers"][0]
    at = container["args"].index("--job-id")
    del container["args"][at:at + 2]
    return spec


def cron_job() -> dict[str, Any]:
    """Suspended in every overlay until an operator sets the schedule and resumes it (see README)."""
    labels = dict(scheduled_job_spec()["template"]["metadata"]["labels"])
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "heating-scheduled", "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "schedule": SCHEDULE,
            "suspend": True,
            # One heating job at a time; a run missed by more than 5 minutes is skipped, not caught up.
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 300,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {"metadata": {"labels": labels}, "spec": scheduled_job_spec()},
        },
    }


def network_policy() -> dict[str, Any]:
    """A heating job talks to Kafka (and DNS); nothing talks to it."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(CONTAINER, "heating-job"),
        "spec": {
            "podSelector": {"matchLabels": {NAME_LABEL: CONTAINER}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [dns_egress(), kafka_egress()],
        },
    }


def documents() -> list[dict[str, Any]]:
    from deploy.gen.services import certificate

    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(TEMPLATE.service_account, "heating-job"),
               "automountServiceAccountToken": False}
    return [account, certificate(TEMPLATE.service_account), cron_job(), network_policy()]
