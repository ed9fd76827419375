"""Workloads: query sets with manifests, generated TPC workloads and varied instances."""
