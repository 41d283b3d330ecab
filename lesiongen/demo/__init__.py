"""Procedural demo data: an MS-like brain MRI phantom and a raw dataset built from it."""
