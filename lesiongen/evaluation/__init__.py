"""Evaluation of generated lesion masks against real ones."""
