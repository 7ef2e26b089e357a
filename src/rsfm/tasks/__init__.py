"""Downstream tasks: fine-tuning and evaluation of encoders on dense and detection tasks."""
