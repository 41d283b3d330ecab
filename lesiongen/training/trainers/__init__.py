"""The fixed trainers, by the name ``lesiongen_train`` takes."""
