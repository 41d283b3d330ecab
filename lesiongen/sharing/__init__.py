"""Trained models and synthetic datasets leaving lesiongen: model zip archives and nnU-Net v2 raw datasets."""
