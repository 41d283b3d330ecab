"""Lesion mask generators: sphere/ellipsoid samplers and, later, learned models."""
