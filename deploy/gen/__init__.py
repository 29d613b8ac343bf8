"""Render the manifests that follow from the code, so they cannot drift from it.

Topics come from :mod:`streams.topics`, each service's produce/consume matrix from
:mod:`streams.topology`, the processes and their start stages from
:mod:`heater.catalogue`, the heating Job from :mod:`streams.heating.k8s`. ``python -m
deploy.gen`` writes them under ``deploy/base/generated/``; ``--check`` fails when the
committed files differ from what the code renders now (the test suite does the same).
"""
