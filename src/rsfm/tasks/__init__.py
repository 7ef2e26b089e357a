"""Downstream tasks: the generic fine-tuning module, file prediction and frozen-encoder probes."""
