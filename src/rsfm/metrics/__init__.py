"""Field metrics for the downstream tasks."""
