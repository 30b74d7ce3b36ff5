"""Scores: similarity functions over activations and the dissector's image-concept matrix, then labels."""
