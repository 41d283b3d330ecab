"""Reading and writing images and the raw dataset layout."""
